"""DeepSpeed's checkpoint files written from host memory, after `save_checkpoint` has returned.

DeepSpeed's `save_checkpoint` is collective and reads its partitioned buffers, so it runs in the
training thread; what it hands its checkpoint engine for each file is a state dict of live tensors.
This engine copies that state into host buffers kept from one save to the next (HostStager) and
serializes it later, on the background save's thread. Its own decoupled engine would do the same
through the async_io op, which needs libaio and is not built on CPU hosts; its files are torch.save
files either way, so DeepSpeed's `load_checkpoint` reads them unchanged.
"""

from pathlib import Path
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from zhinao.training.engine import HostStager


class StagingCheckpointEngine(TorchCheckpointEngine):
    def __init__(self, config_params=None):
        super().__init__(config_params)
        self.staging = False
        self._stagers: dict[str, HostStager] = {}
        self._staged: list[tuple[str, Any]] = []

    def begin(self, *, staging: bool) -> None:
        """Before a `save_checkpoint`: True, its files are staged in host memory for `write_staged`;
        False, they are written at once (and nothing staged earlier is kept)."""
        self.staging, self._staged = staging, []

    def preserves_storage_sharing(self) -> bool:
        # DeepSpeed clones tensors that view its flat buffers before a direct torch.save (else the
        # whole buffer is written); a staged copy is compact already.
        return not self.staging

    def save(self, state_dict, path: str) -> None:
        if not self.staging:
            return super().save(state_dict, path)
        stager = self._stagers.setdefault(Path(path).name, HostStager())  # the same file every save
        self._staged.append((path, stager.stage(state_dict)))

    def write_staged(self) -> None:
        """torch.save what the last `save_checkpoint` staged (call before the next one)."""
        staged, self._staged = self._staged, []
        for path, state in staged:
            torch.save(state, path, _use_new_zipfile_serialization=self.zipfile_serialization)
