"""Worker of test_clip_loss_two_processes: one rank of a 2-process gloo group. Rank r holds rows
[r*B, (r+1)*B) of a global batch, computes the distributed loss, backprops, averages parameter
gradients across ranks (what DDP does) and writes loss and gradients for the test to compare."""

import os
import sys

import torch
import torch.distributed as dist


def main(rank: int, world: int, port: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from tests.clip_loss_case import make_case

    img_net, txt_net, scale, x_img, x_txt = make_case()
    b = x_img.shape[0] // world
    sl = slice(rank * b, (rank + 1) * b)
    import torch.nn.functional as F

    from mmfm.nn.losses import clip_loss

    fi = F.normalize(img_net(x_img[sl]), dim=-1)
    ft = F.normalize(txt_net(x_txt[sl]), dim=-1)
    loss = clip_loss(fi, ft, scale.exp())
    loss.backward()
    params = list(img_net.parameters()) + list(txt_net.parameters()) + [scale]
    for p in params:
        dist.all_reduce(p.grad)
        p.grad /= world
    total = loss.detach().clone()
    dist.all_reduce(total)
    if rank == 0:
        torch.save({"loss": total / world, "grads": [p.grad for p in params]}, out)
    dist.barrier()
    # Leave without tearing the gloo group down: its threads can abort the interpreter at shutdown
    # ("terminate called without an active exception"), a flake of the harness, not of the loss.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
