"""The prepare job's collectives on 2 real gloo ranks: a failure of rank 0's work reaches every rank
as its one line, a SystemExit's included (it is how the token merge says a mixture packs nothing)."""

import json
import os
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from zhinao.ablation.ranks import joined
from zhinao_k8s.runner.local import free_port


def _rank(rank: int, port: int, out: Path) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))

    def fails() -> None:
        raise SystemExit("corpus s3://b/r yields no sequence of 32 tokens")

    try:
        with joined() as ranks:
            ranks.on_main(fails)
        outcome = ["returned", ""]
    except BaseException as exc:
        outcome = [type(exc).__name__, str(exc)]
    (out / f"rank-{rank}.json").write_text(json.dumps(outcome))


@pytest.mark.timeout(120)
def test_a_system_exit_on_rank_0_reaches_every_rank(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(free_port(), tmp_path), nprocs=2, join=True)
    outcomes = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    line = "corpus s3://b/r yields no sequence of 32 tokens"
    assert outcomes == [["SystemExit", line], ["ValueError", f"rank 0 failed: {line}"]]
