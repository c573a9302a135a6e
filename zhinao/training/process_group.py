"""Leaving the job's process groups at the end of a run, so that the process exits cleanly.

A gloo worker thread drops its finished work (and the tensors it holds) just after the collective
returns. If that is the run's last collective and the main thread is already finalizing the
interpreter, the worker cannot take the GIL and the process aborts ("terminate called without an
active exception", SIGABRT) after a run that succeeded: under torchrun and Kubeflow, a failed
replica. A barrier first lets every earlier collective finish and be dropped on every rank while
the main thread waits; the collection after the destroy frees the groups (joining their worker
threads) while the interpreter is still whole.
"""

import gc

import torch.distributed as dist


def leave_process_group(*, barrier: bool = True) -> None:
    """Every rank calls it once at the end of a run; `barrier=False` on a failure path, where the
    other ranks may never arrive."""
    if not dist.is_initialized():
        return
    if barrier:
        dist.barrier()
    dist.destroy_process_group()
    gc.collect()
