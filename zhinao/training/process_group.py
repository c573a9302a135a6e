"""Leaving the job's process groups at the end of a run, so that the process exits cleanly.

A gloo worker thread drops its finished work (and the tensors it holds) just after the collective
returns. If that is the run's last collective and the main thread is already finalizing the
interpreter, the worker cannot take the GIL and the process aborts ("terminate called without an
active exception", SIGABRT) after a run that succeeded: under torchrun and Kubeflow, a failed
replica. A barrier first lets every earlier collective finish and be dropped on every rank while
the main thread waits; the collection after the destroy frees the groups (joining their worker
threads) while the interpreter is still whole.
"""

import contextlib
import gc
from collections.abc import Iterator
from datetime import timedelta

import torch.distributed as dist

from zhinao.distributed import DistEnv


def leave_process_group(*, barrier: bool = True) -> None:
    """Every rank calls it once at the end of a run; `barrier=False` on a failure path, where the
    other ranks may never arrive."""
    if not dist.is_initialized():
        return
    if barrier:
        dist.barrier()
    dist.destroy_process_group()
    gc.collect()


@contextlib.contextmanager
def cpu_group(env: DistEnv, timeout: timedelta) -> Iterator[bool]:
    """A gloo group over the job's ranks for CPU work (barriers, Python objects), from the torchrun or
    training-operator rendezvous in the environment; yields whether this call made one (not for one
    rank, nor when a group is already up). Left at the end, with a barrier only if the body finished."""
    if env.world_size == 1 or dist.is_initialized():
        yield False
        return
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size, timeout=timeout)
    finished = False
    try:
        yield True
        finished = True
    finally:
        leave_process_group(barrier=finished)
