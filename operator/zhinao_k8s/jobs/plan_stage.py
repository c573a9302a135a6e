"""`python -m zhinao_k8s.jobs.plan_stage STAGE`: the memory plan Job the operator runs before a GPU stage.

The pipeline arrives in ZHINAO_PLAN_PIPELINE (render/plan_job.py sets it). The stage's step is planned
on CPU with fake tensors (zhinao_k8s.fit, as `zhinao-k8s plan` does) and the verdict, a `PlanResult`,
is written where Kubernetes reads the container's termination message, and printed. A verdict, even
"refused", exits 0: the Job did its work and the operator decides. A bad spec exits 2 with one line;
anything else fails the Job, whose message is then the log's tail (FallbackToLogsOnError).
"""

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from zhinao_k8s.api.load import SpecError, parse_pipeline
from zhinao_k8s.render.plan_job import ENV_PLAN_PIPELINE, PlanResult

EXIT_SPEC = 2
TERMINATION_LOG = "/dev/termination-log"


def plan_result(pipeline_text: str, stage: str) -> PlanResult:
    from zhinao_k8s.fit import plan_stage, refusal  # torch: imported only when a plan runs

    pipeline = parse_pipeline(pipeline_text, ENV_PLAN_PIPELINE)
    names = [s.name for s in pipeline.spec.stages]
    if stage not in names:
        raise SpecError(ENV_PLAN_PIPELINE, [f"spec.stages: no stage {stage!r} (stages: {', '.join(names)})"])
    fit = plan_stage(pipeline, names.index(stage))
    if fit.plan is None:
        return PlanResult(stage, "skipped", f"not planned: {fit.skipped}")
    if fit.refused:
        return PlanResult(stage, "refused", refusal(fit))
    plan = fit.plan
    return PlanResult(
        stage,
        "fits",
        f"stage {stage!r} needs {plan.peak / 1e9:.1f} GB per GPU of {fit.capacity / 1e9:.1f} GB "
        f"with engine {plan.engine} on {plan.ranks} ranks",
    )


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zhinao_k8s.jobs.plan_stage", description=__doc__.splitlines()[0])
    parser.add_argument("stage")
    parser.add_argument("--result", type=Path, default=Path(TERMINATION_LOG), help="Where the verdict is written.")
    args = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
    text = environ.get(ENV_PLAN_PIPELINE)
    try:
        if not text:
            raise SpecError(ENV_PLAN_PIPELINE, ["not set: this runs in the plan Job the operator creates"])
        result = plan_result(text, args.stage)
    except SpecError as exc:
        print(f"memory plan of {args.stage}: invalid spec {exc}", file=sys.stderr)
        return EXIT_SPEC
    args.result.write_text(result.to_json())
    print(result.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
