"""A small deterministic contrastive problem shared by the single- and multi-process loss tests."""

import torch


def make_case(global_batch: int = 8):
    g = torch.Generator().manual_seed(0)
    img_net = torch.nn.Linear(12, 6)
    txt_net = torch.nn.Linear(10, 6)
    with torch.no_grad():
        for p in list(img_net.parameters()) + list(txt_net.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
    scale = torch.nn.Parameter(torch.tensor(2.0))
    return (
        img_net,
        txt_net,
        scale,
        torch.randn(global_batch, 12, generator=g),
        torch.randn(global_batch, 10, generator=g),
    )
