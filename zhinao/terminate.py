"""SIGTERM as an exception in the main thread, so that a stopped pod finishes what must not be cut.

Kubernetes stops a pod (eviction, preemption, a job's deletion) with SIGTERM, then SIGKILL after
its grace period; torchrun forwards the SIGTERM to every rank. Python's default would end the
process on the spot; raising `Terminated` instead lets the training loop wait for the checkpoint
upload in flight, so that the restart resumes from it. The exit status stays 143 (128 + SIGTERM),
which Kubeflow's ExitCode restart policy counts as retryable.
"""

import contextlib
import signal
from collections.abc import Iterator


class Terminated(SystemExit):
    """The process received SIGTERM."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)

    def __str__(self) -> str:
        return "stopped by SIGTERM"


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
