"""Gloo ranks for multi-process tests.

`spawn(fn, world, *args)` runs `fn(rank, world, *args)` in `world` processes, each inside one
process group on 127.0.0.1, and leaves the group the way a stage does
(zhinao.training.process_group): a rank that returned must not abort while its interpreter exits.
"""

import torch.distributed as dist
import torch.multiprocessing as mp

from zhinao.training.process_group import leave_process_group
from zhinao_k8s.runner.local import free_port


def _rank(rank: int, world: int, port: int, fn, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    fn(rank, world, *args)
    leave_process_group()


def spawn(fn, world: int, *args) -> None:
    """`fn` is a module-level function (the ranks import it); a rank that raises fails the call."""
    mp.spawn(_rank, args=(world, free_port(), fn, args), nprocs=world, join=True)
