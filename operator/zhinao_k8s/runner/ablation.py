"""Run an Ablation locally: process and prepare the data, train every recipe x seed, evaluate, report.

The data pipeline (one distributed data stage per corpus), the prepare job and the runs go through the
local PyTorchJob runner (real processes, as on a cluster) unless `in_process` is set: then each
stage runs in this process with world size 1, which is the same code without the process start-up
(the proof test uses it to stay within its budget). Every step is resumable: processed and
prepared data, finished (published) runs and evaluated runs (runs/<run>.json) are reused.
"""

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from zhinao.ablation.evaluate import evaluate_run, load_tasks
from zhinao.ablation.prepare import PREP_DONE, prepare, read_records
from zhinao.ablation.results import RunResult, build_results, write_results
from zhinao.ablation.sft_eval import evaluate_sft
from zhinao.ablation.suite import build_suite
from zhinao.artifacts import StageOutput
from zhinao.storage import open_store
from zhinao_k8s.api.ablation import Ablation
from zhinao_k8s.api.v1alpha1 import StageBase, TrainingPipeline
from zhinao_k8s.render.ablation import render_step_job, step_job_name
from zhinao_k8s.render.ablation_runs import Run, data_pipeline, expand_runs, prep_uri, root_uri
from zhinao_k8s.runner.local import Listener, LocalJobRunner
from zhinao_k8s.runner.pipeline import run_training_pipeline


class AblationFailed(RuntimeError):
    """A run of the ablation failed; the message names it and the stage."""


@contextmanager
def threads(n: int | None):
    """Proxy runs are small: one thread each is faster than several fighting over shared cores
    (measured 0.24 s vs 2.7 s per tiny step on the loaded 2-core dev machine)."""
    if n is None:
        yield
        return
    import torch

    before_env, before_torch = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = str(n)  # the local runner passes it to every replica
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before_torch)
        if before_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before_env


def _notify(listener: Listener | None):
    return listener or (lambda event, data: None)


def unfinished(pipeline: TrainingPipeline) -> list[StageBase]:
    """The stages that have published no output yet (stages added later, e.g. sft, run alone)."""
    return [s for s in pipeline.spec.stages if not StageOutput.at(pipeline.output_of(s)).is_finished()]


def run_stages(pipeline: TrainingPipeline, stages: list[StageBase], *, workdir: Path, in_process: bool) -> None:
    if in_process:
        from zhinao.stages import run_stage
        from zhinao_k8s.render.pytorchjob import stage_runtime

        for stage in stages:
            run_stage(stage_runtime(pipeline, stage))
        return
    result = run_training_pipeline(pipeline, workdir=workdir, only=[stage.name for stage in stages])
    if not result.succeeded:
        name, outcome = result.stages[-1]
        raise AblationFailed(f"{pipeline.metadata.name} failed in stage {name}: {outcome.reason}")


def prepare_ablation(
    ablation: Ablation, *, workdir: Path, listener: Listener | None = None, in_process: bool = False
) -> dict:
    """The data pipeline (every corpus processed by its own distributed data stage), then the
    preparation that reads its outputs (its PyTorchJob of `dataJobs.replicas` ranks, or this
    process); returns the preparation's summary."""
    notify = _notify(listener)
    data = data_pipeline(ablation)
    todo = unfinished(data) if data is not None else []
    if todo:
        notify("prep", {"step": f"data stages {', '.join(s.name for s in todo)}"})
        run_stages(data, todo, workdir=workdir, in_process=in_process)
    if in_process:
        return prepare(ablation.spec, prep_uri(ablation), listener=notify)
    result = LocalJobRunner(render_step_job(ablation, "prepare"), workdir=workdir, listener=listener).run()
    if not result.succeeded:
        raise AblationFailed(f"{step_job_name(ablation, 'prepare')} failed: {result.reason}")
    return json.loads(open_store(prep_uri(ablation)).get_bytes(PREP_DONE))


def train_runs(
    ablation: Ablation, *, workdir: Path, listener: Listener | None = None, in_process: bool = False
) -> list[Run]:
    notify = _notify(listener)
    runs = expand_runs(ablation)
    for i, run in enumerate(runs, 1):
        todo = unfinished(run.pipeline)
        if not todo:
            notify("run-skipped", {"run": run.name, "i": i, "n": len(runs)})
            continue
        notify("run-started", {"run": run.name, "i": i, "n": len(runs)})
        began = time.time()
        run_stages(run.pipeline, todo, workdir=workdir, in_process=in_process)
        notify("run-finished", {"run": run.name, "i": i, "n": len(runs), "seconds": time.time() - began})
    return runs


def benchmark_items(ablation: Ablation):
    bench = ablation.spec.evaluations.benchmarks
    if not bench.enabled:
        return []
    items = []
    if bench.builtin:
        texts = [r["text"] for r in read_records(open_store(prep_uri(ablation)).child("valid"))]
        items += build_suite(texts, items_per_task=bench.items_per_task, seed=ablation.spec.seed)
    for uri in bench.tasks:
        items += load_tasks(uri)
    return items


def evaluate_ablation(ablation: Ablation, *, workdir: Path, listener: Listener | None = None) -> dict:
    notify = _notify(listener)
    spec = ablation.spec
    root = open_store(root_uri(ablation))
    prep = open_store(prep_uri(ablation))
    items = benchmark_items(ablation)
    results = []
    runs = expand_runs(ablation)
    for i, run in enumerate(runs, 1):
        key = f"runs/{run.name}.json"
        result = json.loads(root.get_bytes(key)) if root.exists(key) else None
        scratch = workdir / "eval" / run.name
        if result is None:
            notify("eval-started", {"run": run.name, "i": i, "n": len(runs)})
            result = evaluate_run(
                run.output,
                valid=spec.evaluations.valid_loss.enabled,
                items=items,
                workdir=scratch,
                max_new_tokens=spec.evaluations.benchmarks.max_new_tokens,
            )
            root.put_bytes(key, json.dumps(result, indent=1).encode())
        if run.sft_output and "sft" not in result:  # also when the SFT evaluation was switched on later
            notify("eval-started", {"run": f"{run.name} (sft)", "i": i, "n": len(runs)})
            result["sft"] = evaluate_sft(run.sft_output, spec.evaluations.sft, prep_uri(ablation), scratch)
            root.put_bytes(key, json.dumps(result, indent=1).encode())
        results.append(RunResult(run.recipe, run.index, run.seed, run.name, result))
    prep_summary = json.loads(prep.get_bytes(PREP_DONE))
    report = build_results(
        ablation.metadata.name,
        results,
        [r.name for r in spec.recipes],
        meta={
            "spec": ablation.to_wire(),
            "prep": prep_summary,
            "proxy": {
                "model_size": spec.proxy.model_size,
                "tokens": spec.proxy.tokens,
                "max_steps": spec.proxy.max_steps,
            },
        },
    )
    write_results(StageOutput(root).report, report, results)
    notify("report", {"uri": StageOutput(root).report_url("report.md")})
    return report


def run_ablation(
    ablation: Ablation,
    *,
    workdir: Path,
    listener: Listener | None = None,
    in_process: bool = False,
    threads_per_run: int | None = 1,
) -> dict:
    """Prepare, train, evaluate and report; returns the report (also under <storage>/<ablation>/report/)."""
    notify = _notify(listener)
    with threads(threads_per_run):
        prepare_ablation(ablation, workdir=workdir, listener=notify, in_process=in_process)
        train_runs(ablation, workdir=workdir, listener=listener, in_process=in_process)
        return evaluate_ablation(ablation, workdir=workdir, listener=listener)
