"""GroupDRO steps of a DDP-wrapped linear model, for tests/training/test_distributed.py.

Run as ``torchrun --standalone --nproc_per_node=2 tests/_support/groupdro_ranks.py OUT_DIR
ADJUSTMENT...``: for every group adjustment given, every rank trains on its half of each
global batch and writes ``OUT_DIR/<adjustment>-rank<r>.pt`` with the group weights, loss
and parameter gradients of every step.
:func:`run_steps` with ``rank=0, world_size=1`` is the same run in one process.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable

import torch

from rest_fair.objectives import GroupDROObjective

N_GROUPS, ETA, STEPS, BATCH = 4, 0.5, 4, 24
GROUP_SIZES = torch.tensor([40, 9, 16, 4])


def batch(step: int) -> tuple[torch.Tensor, ...]:
    """Global batch ``step``: group 3 only in the second half of even steps, group 2
    absent from step 1."""
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 5, generator=gen)
    y = torch.randint(0, 3, (BATCH,), generator=gen)
    g = torch.randint(0, N_GROUPS, (BATCH,), generator=gen)
    w = torch.rand(BATCH, generator=gen) + 0.5
    if step % 2 == 0:
        g[: BATCH // 2] = torch.where(g[: BATCH // 2] == 3, 0, g[: BATCH // 2])
    if step == 1:
        g = torch.where(g == 2, 1, g)
    return x, y, g, w


def run_steps(rank: int, world_size: int, adjustment: float,
              all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
              wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m) -> list:
    """``(q, loss, gradients)`` after each SGD step on this rank's slice of the batches."""
    torch.manual_seed(0)
    net = wrap(torch.nn.Linear(5, 3))
    kwargs = {} if all_reduce is None else {"all_reduce": all_reduce}
    objective = GroupDROObjective(N_GROUPS, eta=ETA, device=torch.device("cpu"),
                                  world_size=world_size, adjustment=adjustment,
                                  group_sizes=GROUP_SIZES, **kwargs)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.3)
    share = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    steps = []
    for step in range(STEPS):
        x, y, g, w = (t[share] for t in batch(step))
        optimizer.zero_grad()
        loss = objective(net(x), y, w, g)
        loss.backward()
        steps.append((objective.q.clone(), float(loss.detach()),
                      [p.grad.clone() for p in net.parameters()]))
        optimizer.step()
    return steps


def main(out: str, adjustments: list[float]) -> None:
    # torch.distributed.nn.functional is imported before the group exists, as rest_fair's
    # own fits do: imported later (DDP imports it on its first wrap) its functions bind the
    # group as a default argument, so destroy_process_group cannot free it and a gloo
    # thread alive at exit can abort the rank (SIGABRT)
    import torch.distributed as dist
    import torch.distributed.nn.functional
    from torch.nn.parallel import DistributedDataParallel

    from rest_fair.training.distributed import DistributedContext

    dist.init_process_group("gloo")
    try:
        rank, world_size = dist.get_rank(), dist.get_world_size()
        world = DistributedContext(rank=rank, world_size=world_size, local_rank=rank,
                                   device=torch.device("cpu"), backend="gloo", timeout=60.0)
        for adjustment in adjustments:
            steps = run_steps(rank, world_size, adjustment, world.all_reduce,
                              DistributedDataParallel)
            torch.save(steps, os.path.join(out, f"{adjustment}-rank{rank}.pt"))
    finally:
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], [float(a) for a in sys.argv[2:]])
