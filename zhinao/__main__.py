"""Entry point of every training replica: `torchrun ... -m zhinao`.

The stage comes from the file ZHINAO_STAGE_SPEC_FILE names (a ConfigMap the PyTorchJob renderer
mounts), so the container command is the same for every stage and the job is reproducible from
its manifests alone. Before the stage runs, rank 0 takes the output's single-writer lease and
checks the output's fingerprint (zhinao.lease, zhinao.fingerprint); the stage then writes under
its own generation of the output, which rank 0 publishes once every rank has finished
(zhinao.publication). A failing process leaves its
reason as one line in the termination log (Kubernetes shows it in the pod's status; the local
runner in its summary).
"""

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from zhinao.config.runtime import DEFAULT_TERMINATION_LOG, ENV_TERMINATION_LOG, StageRuntime
from zhinao.fingerprint import FINGERPRINT_KEY, OutputMismatch, check_or_record, stage_fingerprint
from zhinao.lease import hold, writer_id
from zhinao.publication import Staged, finish, staged
from zhinao.stages import run_stage
from zhinao.storage import ObjectStore, open_store, sweep_stale_temp
from zhinao.terminate import sigterm_raises

log = logging.getLogger("zhinao")
# Kubernetes keeps at most 4096 bytes of a termination message for all containers of a pod.
MAX_REASON_CHARS = 1000
CLAIM_WAIT_SECONDS = 600.0
"""How long the other ranks wait for rank 0 to claim the output."""
EXIT_REFUSED = 1
"""A refused output (another run's fingerprint): permanent under Kubeflow's ExitCode restart policy,
since a restart would be refused again."""


def failure_line(exc: BaseException) -> str:
    """`rank N: Type: message` on one line, short enough for a pod's termination message."""
    text = " ".join(str(exc).split()) or "(no message)"
    line = f"rank {os.environ.get('RANK', '0')}: {type(exc).__name__}: {text}"
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


def record_failure(exc: BaseException) -> None:
    """Append the reason to the termination log; the first line written is the root cause (the
    other ranks usually fail after it, of a lost peer). Best effort: never masks the error."""
    path = Path(os.environ.get(ENV_TERMINATION_LOG) or DEFAULT_TERMINATION_LOG)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(failure_line(exc) + "\n")
    except OSError:
        pass


def sweep_leftovers(rt: StageRuntime) -> None:
    """Temporary files of a writer killed in an earlier run (a SIGKILL runs no cleanup)."""
    roots = [os.environ.get("ZHINAO_WORKDIR")]
    if rt.output.startswith("file://"):
        roots.append(rt.output[len("file://") :])
    for root in filter(None, roots):
        for path in sweep_stale_temp(root):
            log.info("removed %s, left by a killed writer", path)


@contextlib.contextmanager
def claimed_output(rt: StageRuntime, rank: int) -> Iterator[Staged]:
    """Rank 0 takes the output's single-writer lease for the whole run and checks (or records) the
    output's fingerprint; the other ranks start writing only once rank 0 has recorded the very
    fingerprint they compute themselves. Yields where this run writes and reads."""
    store = open_store(rt.output)
    fingerprint = stage_fingerprint(rt)
    if rank != 0:
        wait_for_fingerprint(store, fingerprint)
        yield staged(rt, fingerprint)
        return
    with hold(store, writer_id()):
        outcome = check_or_record(store, fingerprint, overwrite=rt.overwrite)
        log.info("output %s: %s (writer %s)", store.uri, outcome, writer_id())
        yield staged(rt, fingerprint)


def run_and_publish(rt: StageRuntime, rank: int, world_size: int) -> None:
    with claimed_output(rt, rank) as run:
        if run.published:
            log.info("%s already holds this stage's result (same fingerprint): nothing to do", rt.output)
            return
        run_stage(run.runtime)
        finish(open_store(rt.output), run, rank=rank, world_size=world_size)


def wait_for_fingerprint(store: ObjectStore, fingerprint: dict) -> None:
    deadline = time.monotonic() + CLAIM_WAIT_SECONDS
    while time.monotonic() < deadline:
        if store.exists(FINGERPRINT_KEY) and json.loads(store.get_bytes(FINGERPRINT_KEY)) == fingerprint:
            return
        time.sleep(0.5)
    raise OutputMismatch(f"{store.uri}: rank 0 did not claim the output within {CLAIM_WAIT_SECONDS:.0f}s")


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("ZHINAO_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s rank{os.environ.get('RANK', '0')} %(levelname)s %(name)s: %(message)s",
    )
    try:
        rt = StageRuntime.from_file()
        sweep_leftovers(rt)
        with sigterm_raises():
            run_and_publish(rt, int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
    except SystemExit as exc:
        if exc.code not in (0, None):
            record_failure(exc)
        raise
    except OutputMismatch as exc:  # a refusal that names the differing fields: a traceback adds nothing
        record_failure(exc)
        log.error("%s", exc)
        return EXIT_REFUSED
    except BaseException as exc:
        record_failure(exc)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
