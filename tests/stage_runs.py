"""Helpers of the slow tests that run stages as real PyTorchJobs through the local runner
(tests/zhinao/stages, tests/zhinao/longctx; tests/ is on sys.path).

    run(spec, workdir)            parse a TrainingPipeline (JSON) and run its stages: (pipeline, result)
    stage_output(pipeline, name)  the ObjectStore of what a stage published
    step_records(store, rank)     the per-step records of one rank's metrics log
    run_killing_a_rank(...)       run while one rank's training process is SIGKILLed mid-run
    stop_after_a_checkpoint(...)  run until a stage's first checkpoint, then kill a rank: the job fails
    refusal(result)               the one line a stage failed with, and its master's log
    assert_restarted_and_resumed(...)   what the runner and the stage must do about that kill
"""

import glob
import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil

import zhinao
from zhinao.artifacts import published_store
from zhinao.storage import ObjectStore, open_store
from zhinao_k8s.api.load import parse_pipeline
from zhinao_k8s.runner.pipeline import PipelineResult, run_training_pipeline

LIBRARY = Path(zhinao.__file__).parent
"""A traceback through the training library names its files: a refusal's log must not."""


def run(spec: str, workdir: Path, listener=None, secrets=None):
    pipeline = parse_pipeline(spec)
    result = run_training_pipeline(pipeline, workdir=workdir, listener=listener, secrets=secrets)
    return pipeline, result


def stage_output(pipeline, stage: str) -> ObjectStore:
    return published_store(open_store(pipeline.output_of(pipeline.stage(stage))))


def in_any_generation(output: Path, key: str) -> Path:
    """A pattern for `key` inside whichever generation of a file:// output a run writes."""
    return output / "_gen" / "*" / key


def step_records(store: ObjectStore, rank: int = 0) -> list[dict]:
    lines = store.get_bytes(f"metrics/rank-{rank}.jsonl").decode().splitlines()
    return [r for r in (json.loads(l) for l in lines if l.strip()) if r.get("event", "step") == "step"]


def run_killing_a_rank(spec: str, workdir: Path, *, once_exists: Path, replica: str = "worker-0", timeout: float = 300):
    """Run `spec`, SIGKILLing the training process of `replica` as soon as a file matching the
    pattern `once_exists` appears (a stage's checkpoints/latest in a file:// store): a node lost mid-run, which the
    runner answers as Kubeflow does: the failed containers (the killed one's, then those of the
    ranks that lose their peer) restart in place. Returns (pipeline, result, whether it killed)."""
    pids: dict[str, int] = {}
    killed = threading.Event()

    def listener(event, data):
        if event == "started" and data["container"] == "pytorch" and data["restarts"] == 0:
            pids[data["replica"]] = data["pid"]

    def killer():
        deadline = time.time() + timeout
        while not glob.glob(str(once_exists)):
            if time.time() > deadline:
                return
            time.sleep(0.02)
        agent = psutil.Process(pids[replica])
        trainer = agent.children(recursive=True)[0]  # torchrun's worker: the rank's training process
        os.kill(trainer.pid, signal.SIGKILL)
        killed.set()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    pipeline, result = run(spec, workdir, listener)
    thread.join(5)
    return pipeline, result, killed.is_set()


def stop_after_a_checkpoint(spec: str, workdir: Path, output: Path) -> int:
    """Run `spec` (backoffLimit 0: a stopped run stays stopped) until a checkpoint of the stage whose
    file:// output is `output` is committed, then SIGKILL a rank: the job fails. Returns the step of
    the checkpoint a resumed run starts from."""
    _, result, killed = run_killing_a_rank(spec, workdir, once_exists=in_any_generation(output, "checkpoints/latest"))
    assert killed and not result.succeeded, result.stages[0][1].reason
    [latest] = output.glob("_gen/*/checkpoints/latest")
    return int(latest.read_text().strip().removeprefix("step-"))


def refusal(result: PipelineResult) -> tuple[str, str]:
    """(the one line the first stage failed with, its master's log) of a run that must have failed;
    torchrun reports the failed child with a traceback of its own, none may come from our code."""
    job = result.stages[0][1]
    log = (job.log_dir / "master-0.log").read_text()
    assert not result.succeeded and job.failures[0].exit_code != 0, log[-3000:]
    assert f'File "{LIBRARY}' not in log, log[-3000:]
    return job.failures[0].message, log


def assert_restarted_and_resumed(result: PipelineResult, *, killed: bool, replica: str, step: int) -> None:
    """The killed replica failed first; after the restarts it cost (one per pod, or more while the
    restarted rendezvous settles) the job resumed from `step` and succeeded."""
    job = result.stages[0][1]
    master_log = (job.log_dir / "master-0.log").read_text()
    assert killed, "the run finished before the rank could be killed"
    assert result.succeeded and job.restarts >= 1, (job.failures, master_log[-3000:])
    assert job.failures[0].replica == replica, job.failures
    assert f"resumed from step {step}" in master_log, master_log[-3000:]
