"""`python -m zhinao_k8s.jobs.plan_stage STAGE` for real on a tiny GPU spec: the verdict it writes as
the termination message, which the operator's gate reads (controller/fit_gate.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from zhinao_k8s.api.v1alpha1 import TrainingPipeline
from zhinao_k8s.jobs.plan_stage import EXIT_SPEC, main
from zhinao_k8s.render.plan_job import ENV_PLAN_PIPELINE, PlanResult, render_plan_job

REPO = Path(__file__).resolve().parents[3]


def pipeline(gpu_memory: str) -> TrainingPipeline:
    return TrainingPipeline.model_validate(
        {
            "metadata": {"name": "tiny"},
            "spec": {
                "stages": [
                    {
                        "name": "tok",
                        "kind": "tokenizer",
                        "inputs": {"corpus": "file:///c"},
                        "params": {"vocabSize": 512},
                    },
                    {
                        "name": "pre",
                        "kind": "pretrain",
                        "resources": {"gpu": 1, "gpuMemory": gpu_memory},
                        "inputs": {"tokenizer": "stage://tok", "corpus": "file:///c"},
                        "params": {"seqLen": 64, "microBatchSize": 2},
                    },
                ]
            },
        }
    )


def job_env(p: TrainingPipeline) -> dict[str, str]:
    """The environment the operator's plan Job gives the process."""
    (container,) = render_plan_job(p, p.stage("pre"))["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def test_the_job_module_writes_a_fitting_verdict(tmp_path: Path) -> None:
    result = tmp_path / "termination-log"
    env = {**os.environ, **job_env(pipeline("80G")), "PYTHONPATH": f"{REPO}:{REPO / 'operator'}"}
    env.pop("ZHINAO_WORKDIR")  # /scratch exists only in the pod
    out = subprocess.run(
        [sys.executable, "-m", "zhinao_k8s.jobs.plan_stage", "pre", "--result", str(result)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    verdict = PlanResult.from_json(result.read_text())
    assert verdict is not None and (verdict.stage, verdict.verdict) == ("pre", "fits")
    assert (
        verdict.message.startswith("stage 'pre' needs ") and "of 80.0 GB with engine ddp on 1 ranks" in verdict.message
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == json.loads(result.read_text())


def test_a_stage_that_cannot_fit_is_refused_with_the_numbers(tmp_path: Path) -> None:
    result = tmp_path / "termination-log"
    assert main(["pre", "--result", str(result)], job_env(pipeline("4G"))) == 0
    verdict = PlanResult.from_json(result.read_text())
    assert verdict.verdict == "refused"
    assert verdict.message.startswith("spec.stages[1].resources.gpuMemory: stage 'pre' needs ")
    assert len(result.read_bytes()) <= 4096  # what Kubernetes keeps of a termination message


def test_a_cpu_stage_is_not_planned_and_a_bad_spec_is_one_line(tmp_path: Path, capsys) -> None:
    result = tmp_path / "termination-log"
    assert main(["tok", "--result", str(result)], job_env(pipeline("80G"))) == 0
    assert PlanResult.from_json(result.read_text()).verdict == "skipped"
    assert main(["nope", "--result", str(result)], job_env(pipeline("80G"))) == EXIT_SPEC
    assert main(["pre", "--result", str(result)], {ENV_PLAN_PIPELINE: "{"}) == EXIT_SPEC
    assert main(["pre", "--result", str(result)], {}) == EXIT_SPEC
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("memory plan of ") for line in err)
    assert "no stage 'nope' (stages: tok, pre)" in err[0]
