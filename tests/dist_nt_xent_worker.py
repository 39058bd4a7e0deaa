"""Worker of test_nt_xent_two_processes: one rank of a 2-process gloo group. Rank r holds rows
[r*B, (r+1)*B) of both views; it computes mmfm's NT-Xent and lightly's (gather_distributed=True) on its
rows, backprops ours, averages the gradients across ranks (what DDP does) and rank 0 writes both losses
(averaged over ranks) and the gradients."""

import os
import sys

import torch
import torch.distributed as dist


def case(seed: int = 0, n: int = 12, d: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def main(rank: int, world: int, port: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from lightly.loss import NTXentLoss

    from mmfm.nn.losses import nt_xent_loss

    a, b = case()
    n = a.shape[0] // world
    sl = slice(rank * n, (rank + 1) * n)
    z1, z2 = a[sl].clone().requires_grad_(True), b[sl].clone().requires_grad_(True)
    ours = nt_xent_loss(z1, z2, 0.3)
    ref = NTXentLoss(temperature=0.3, gather_distributed=True)(a[sl], b[sl])
    ours.backward()
    grads = [torch.zeros_like(a), torch.zeros_like(b)]
    grads[0][sl], grads[1][sl] = z1.grad / world, z2.grad / world  # DDP averages each rank's gradient
    for gr in grads:
        dist.all_reduce(gr)
    losses = torch.stack([ours.detach(), ref.detach()])
    dist.all_reduce(losses)
    if rank == 0:
        torch.save({"losses": losses / world, "grads": grads}, out)
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # as in dist_clip_loss_worker: no gloo teardown at exit


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
