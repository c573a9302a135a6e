"""The ranks of the ablation's prepare job and the few collectives it needs (gloo, Python objects).

The only place in zhinao.ablation that touches torch.distributed. `Ranks()` is one process: every
collective is then a plain call. `joined()` is the job's group: one process per pod, RANK,
WORLD_SIZE and MASTER_ADDR/MASTER_PORT from the training operator (or torchrun).

A rank that fails ends its process, and a collective the others are in or come to then fails in
gloo ("Connection reset by peer"); they end with `RankLeft`, one line, while the failed rank's own
log says why.
"""

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from zhinao.distributed import DistEnv

T = TypeVar("T")
WAIT = timedelta(hours=12)
"""How long a rank waits for the others: the workers wait while rank 0 alone trains the tokenizer
and writes each mixture, hours at the report's scale."""


class RankLeft(ValueError):
    """Another rank of the job ended (its own log says why) while this one waited for it."""


@contextlib.contextmanager
def _peers_present(rank: int, world_size: int, what: str) -> Iterator[None]:
    """A gloo error inside a collective as one line: that error is another rank's exit (or, after
    WAIT, its absence)."""
    try:
        yield
    except RuntimeError:
        raise RankLeft(
            f"rank {rank} of {world_size}: another rank of the job ended (or did not come within "
            f"{WAIT.total_seconds() / 3600:g} h) while this one waited in {what}; that rank's log says why"
        ) from None


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    """This process's rank in the prepare job (RANK)."""
    world_size: int = 1
    """The job's processes, one per pod (WORLD_SIZE; dataJobs.replicas)."""

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as td

            with _peers_present(self.rank, self.world_size, "a barrier"):
                td.barrier()

    def gather(self, obj: T) -> list[T] | None:
        """Every rank's `obj` in rank order on rank 0; None on the others."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as td

        out: list = [None] * self.world_size if self.main else []
        with _peers_present(self.rank, self.world_size, "a gather"):
            td.gather_object(obj, out if self.main else None, dst=0)
        return out if self.main else None

    def on_main(self, fn: Callable[[], T]) -> T:
        """fn() run on rank 0 alone, its result handed to every rank. When it raises, every rank
        raises, so none waits for a result that never comes (a SystemExit too: its line is the reason)."""
        if self.world_size == 1:
            return fn()
        import torch.distributed as td

        box: list = [None]
        failure: Exception | None = None
        if self.main:
            try:
                box[0] = (True, fn())
            except (Exception, SystemExit) as exc:  # re-raised below, after the others were told
                failure = exc
                box[0] = (False, str(exc))
        with _peers_present(self.rank, self.world_size, "rank 0's broadcast"):
            td.broadcast_object_list(box, src=0)
        ok, value = box[0]
        if failure is not None:
            raise failure
        if not ok:
            raise ValueError(f"rank 0 failed: {value}")
        return value


@contextlib.contextmanager
def joined() -> Iterator[Ranks]:
    """This process's place in the job, with a gloo group when there is more than one rank."""
    from zhinao.training.process_group import cpu_group

    env = DistEnv.from_env()
    with cpu_group(env, WAIT):
        yield Ranks(env.rank, env.world_size)
