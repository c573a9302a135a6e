"""Entry point of every training replica: `torchrun ... -m zhinao`.

The stage comes from the file ZHINAO_STAGE_SPEC_FILE names (a ConfigMap the PyTorchJob renderer
mounts), so the container command is the same for every stage and the job is reproducible from
its manifests alone. A failing process leaves its reason as one line in the termination log
(Kubernetes shows it in the pod's status; the local runner in its summary).
"""

import logging
import os
import sys
from pathlib import Path

from zhinao.config.runtime import DEFAULT_TERMINATION_LOG, ENV_TERMINATION_LOG, StageRuntime
from zhinao.stages import run_stage
from zhinao.storage import sweep_stale_temp

log = logging.getLogger("zhinao")
# Kubernetes keeps at most 4096 bytes of a termination message for all containers of a pod.
MAX_REASON_CHARS = 1000


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


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("ZHINAO_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s rank{os.environ.get('RANK', '0')} %(levelname)s %(name)s: %(message)s",
    )
    try:
        rt = StageRuntime.from_file()
        sweep_leftovers(rt)
        run_stage(rt)
    except SystemExit as exc:
        if exc.code not in (0, None):
            record_failure(exc)
        raise
    except BaseException as exc:
        record_failure(exc)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
