"""`python -m zhinao_k8s.jobs.ablation_step prepare|evaluate`: what an Ablation's two PyTorchJobs run.

The whole Ablation document arrives in ZHINAO_ABLATION_SPEC (render/ablation.py sets it), so the
job needs no other input. prepare builds `<storage>/<ablation>/prep/` (zhinao.ablation.prepare) on
every pod of its job, one rank each (RANK/WORLD_SIZE/MASTER_ADDR from the training operator);
evaluate scores every run and writes `<storage>/<ablation>/report/`. Both resume what an earlier
attempt wrote. A spec, data or storage problem ends the process with one line on stderr instead of
a traceback: that line is what `kubectl logs` of the failed job shows.
"""

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from zhinao.artifacts import StageOutput
from zhinao.storage import StorageError
from zhinao_k8s.api.ablation import Ablation, parse_ablation
from zhinao_k8s.api.load import SpecError
from zhinao_k8s.render.ablation import ENV_ABLATION_SPEC, STEPS
from zhinao_k8s.render.ablation_runs import expand_runs, prep_uri, report_uri

EXIT_FAILED = 1
EXIT_SPEC = 2


def read_ablation(environ: Mapping[str, str]) -> Ablation:
    raw = environ.get(ENV_ABLATION_SPEC)
    if not raw:
        raise SpecError(
            ENV_ABLATION_SPEC, ["not set: this runs in an Ablation's PyTorchJob, which the operator creates"]
        )
    return parse_ablation(raw, ENV_ABLATION_SPEC)


def _log(event: str, data: dict) -> None:
    print(f"{event}: {json.dumps(data, sort_keys=True)}", flush=True)


def run_step(step: str, ablation: Ablation, workdir: Path) -> dict:
    """The step's summary: prepare's data summary, or where evaluate wrote the report."""
    if step == "prepare":
        from zhinao.ablation.prepare import prepare
        from zhinao.ablation.ranks import joined

        with joined() as ranks:  # every pod of the job is a rank (gloo), or one process
            return prepare(ablation.spec, prep_uri(ablation), listener=_log, ranks=ranks)
    from zhinao_k8s.runner.ablation import evaluate_ablation

    unfinished = [
        run.name
        for run in expand_runs(ablation)
        for stage in run.pipeline.spec.stages
        if not StageOutput.at(run.pipeline.output_of(stage)).is_finished()
    ]
    if unfinished:  # else the first missing checkpoint fails deep inside model loading
        raise ValueError(f"runs not finished (a stage published nothing yet): {', '.join(sorted(set(unfinished)))}")
    evaluate_ablation(ablation, workdir=workdir, listener=_log)
    return {"report": report_uri(ablation)}


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zhinao_k8s.jobs.ablation_step", description=__doc__.splitlines()[0]
    )
    parser.add_argument("step", choices=STEPS)
    args = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        ablation = read_ablation(environ)
        workdir = Path(environ.get("ZHINAO_WORKDIR") or tempfile.mkdtemp(prefix="zhinao-ablation-"))
        summary = run_step(args.step, ablation, workdir)
    except SpecError as exc:
        print(f"ablation {args.step}: invalid spec {exc}", file=sys.stderr)
        return EXIT_SPEC
    except (StorageError, ValueError) as exc:  # storage names the key and cause; data problems say what to change
        print(f"ablation {args.step} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
