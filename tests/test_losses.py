"""The contrastive loss: its definition, and the distributed form equal to one process on the same
global batch (two real processes on the gloo backend)."""

import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from mmfm.nn.losses import clip_loss
from tests.clip_loss_case import make_case

ROOT = Path(__file__).resolve().parents[1]


def test_clip_loss_definition():
    g = torch.Generator().manual_seed(1)
    a = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    b = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    s = torch.tensor(10.0)
    logits = s * a @ b.T
    want = 0
    for i in range(5):  # written out row by row
        want += -torch.log_softmax(logits[i], 0)[i] - torch.log_softmax(logits[:, i], 0)[i]
    assert torch.allclose(clip_loss(a, b, s), want / 10, atol=1e-6)
    # perfectly aligned pairs with a sharp temperature give ~0 loss
    assert clip_loss(a, a, torch.tensor(1000.0)) < 1e-3
    # hard negatives only add to the image->text side
    neg = F.normalize(torch.randn(3, 4, generator=g), dim=-1)
    li = F.cross_entropy(s * a @ torch.cat([b, neg]).T, torch.arange(5))
    lt = F.cross_entropy(s * b @ a.T, torch.arange(5))
    assert torch.allclose(clip_loss(a, b, s, negatives=neg), (li + lt) / 2, atol=1e-6)


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_clip_loss_two_processes_equals_one(tmp_path):
    img_net, txt_net, scale, x_img, x_txt = make_case()
    loss = clip_loss(F.normalize(img_net(x_img), dim=-1), F.normalize(txt_net(x_txt), dim=-1), scale.exp())
    loss.backward()
    params = list(img_net.parameters()) + list(txt_net.parameters()) + [scale]

    out, port = tmp_path / "rank0.pt", _free_port()
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.dist_clip_loss_worker", str(r), "2", port, str(out)], cwd=ROOT)
        for r in range(2)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    got = torch.load(out, weights_only=True)
    assert torch.allclose(got["loss"], loss.detach(), atol=1e-6)
    for g, p in zip(got["grads"], params):
        assert torch.allclose(g, p.grad, atol=1e-6)
