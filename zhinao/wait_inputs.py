"""`python -m zhinao.wait_inputs`: the init container of every stage's pods.

A rendered pipeline applied with plain `kubectl apply` creates every stage's PyTorchJob at once;
this keeps a stage's pods from starting its trainer until every input another stage produces
carries that stage's success marker. It reads the same stage spec file as the trainer and the
same storage settings (ZHINAO_S3_ENDPOINT, AWS_* from the Secret).

Exit codes: 0 all inputs ready, 1 timed out (the log's last line names the missing input).
"""

import argparse
import logging
import sys
import time
from collections.abc import Callable

from zhinao.artifacts import MANIFEST, StageOutput
from zhinao.config.runtime import StageRuntime
from zhinao.storage import StorageError

log = logging.getLogger("zhinao.wait_inputs")
DEFAULT_TIMEOUT_SECONDS = 7 * 24 * 3600
"""Upstream stages may pretrain for days."""
REPORT_EVERY_SECONDS = 300.0


def marker_uri(uri: str) -> str:
    """The success marker: the manifest that publishes a finished run (zhinao.publication)."""
    return f"{uri.rstrip('/')}/{MANIFEST}"


def ready(uri: str) -> bool:
    """Whether the stage that writes `uri` has finished; a storage failure counts as not yet."""
    try:
        return StageOutput.at(uri).is_finished()
    except (StorageError, ValueError) as exc:
        log.warning("cannot check %s yet: %s", marker_uri(uri), exc)
        return False


def wait_for_inputs(
    rt: StageRuntime,
    *,
    timeout: float,
    interval: float,
    is_ready: Callable[[str], bool] = ready,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """None once every upstream input is ready; else the name of the first one still missing at the timeout."""
    began = clock()
    last_report = -REPORT_EVERY_SECONDS
    for name in rt.upstream:
        uri = rt.inputs[name]
        while not is_ready(uri):
            waited = clock() - began
            if waited >= timeout:
                return name
            if waited - last_report >= REPORT_EVERY_SECONDS:
                log.info("stage %s waits for input %s: %s does not exist yet", rt.stage, name, marker_uri(uri))
                last_report = waited
            sleep(min(interval, max(0.0, timeout - waited)))
        log.info("input %s is ready (%s)", name, marker_uri(uri))
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zhinao.wait_inputs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="seconds before giving up")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between checks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rt = StageRuntime.from_file()
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    missing = wait_for_inputs(rt, timeout=args.timeout, interval=args.interval)
    if missing is None:
        return 0
    log.error(
        "timed out after %.0fs: input %s of stage %s is not ready: %s does not exist "
        "(the stage that writes it has not succeeded)",
        args.timeout,
        missing,
        rt.stage,
        marker_uri(rt.inputs[missing]),
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
