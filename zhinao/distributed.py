"""The process's place in the job, from the torchrun / PyTorchJob environment."""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int
    """Global rank of this process (torchrun sets RANK per worker)."""
    world_size: int
    local_rank: int

    @classmethod
    def from_env(cls) -> "DistEnv":
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n_items: int) -> range:
        """The contiguous slice of n_items this rank owns (the last ranks may get one fewer)."""
        per, extra = divmod(n_items, self.world_size)
        start = self.rank * per + min(self.rank, extra)
        return range(start, start + per + (1 if self.rank < extra else 0))
