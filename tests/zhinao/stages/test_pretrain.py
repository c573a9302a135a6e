"""The pretrain stage end to end, through the local PyTorchJob runner, with real processes."""

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from stage_runs import assert_restarted_and_resumed, in_any_generation, run, run_killing_a_rank, stage_output
from transformers import AutoModelForCausalLM

from zhinao.artifacts import published_store
from zhinao.publication import writing_store
from zhinao.storage import StorageError, open_store
from zhinao.training.hf_export import read_export
from zhinao_k8s.api.load import parse_pipeline
from zhinao_k8s.runner.pipeline import run_training_pipeline

pytestmark = pytest.mark.slow


def weights(uri: str) -> dict[str, torch.Tensor]:
    return read_export(Path(uri.removeprefix("file://")) / "hf")


def test_sigkill_of_a_rank_resumes_from_checkpoint_with_identical_final_weights(
    tmp_path, stage_assets, make_pretrain_spec
):
    ref_pipeline, ref = run(make_pretrain_spec("ref", f"file://{tmp_path}/store", stage_assets), tmp_path / "w1")
    assert ref.succeeded and ref.stages[0][1].restarts == 0

    pipeline, result, killed = run_killing_a_rank(
        make_pretrain_spec("killed", f"file://{tmp_path}/store", stage_assets),
        tmp_path / "w2",
        once_exists=in_any_generation(tmp_path / "store" / "killed" / "pretrain", "checkpoints/latest"),
    )
    assert_restarted_and_resumed(result, killed=killed, replica="worker-0", step=10)

    a, b = weights(stage_output(ref_pipeline, "pretrain").uri), weights(stage_output(pipeline, "pretrain").uri)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    # The metrics log covers every step once, despite the restart.
    out = stage_output(pipeline, "pretrain")
    steps = [
        json.loads(l)["step"]
        for l in out.get_bytes("metrics/rank-0.jsonl").decode().splitlines()
        if json.loads(l).get("event") == "step"
    ]
    assert steps == list(range(1, 31))
    summary = json.loads(out.get_bytes("summary.json"))
    assert summary["loss_last"] < summary["loss_first"]
    model = AutoModelForCausalLM.from_pretrained(summary["hf"].removeprefix("file://"))
    assert model.config.model_type == "qwen2" and not model.config.tie_word_embeddings


def test_s3_outage_during_a_checkpoint_is_survived_and_latest_is_never_partial(
    tmp_path, stage_assets, make_pretrain_spec, fresh_s3_server
):
    from zhinao.checkpoint import parse_step_name
    from zhinao.storage import StoreRetry

    server = fresh_s3_server
    spec = json.loads(
        make_pretrain_spec("outage", "s3://zhinao-ci/runs", stage_assets, maxSteps=30, checkpointEvery=10)
    )
    spec["spec"]["storage"].update(endpoint=server.endpoint, credentials={"secretRef": {"name": "s3"}})
    secrets = {"s3": {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}}
    root = server.store("s3://zhinao-ci/runs/outage/pretrain")
    probe_root = server.store("s3://zhinao-ci/runs/outage/pretrain", retry=StoreRetry(attempts=1))
    metrics_log = tmp_path / "w" / "scratch" / "outage-pretrain" / "master-0" / "metrics" / "rank-0.jsonl"
    observed_latest: list[str] = []
    outage = threading.Event()

    def chaos():
        # Take S3 down just before the step-20 checkpoint, so its upload meets a dead endpoint.
        deadline = time.time() + 300
        while time.time() < deadline:
            lines = metrics_log.read_text().splitlines() if metrics_log.exists() else []
            if any(json.loads(l).get("step") == 19 for l in lines if l.strip()):
                break
            time.sleep(0.02)
        server.stop()
        outage.set()
        time.sleep(4)
        server.start()

    def watch_latest():
        # Whenever `latest` can be read, the checkpoint it names must be complete.
        while not done.wait(0.05):
            try:
                probe = writing_store(probe_root)
                if probe is None:
                    continue
                name = probe.get_bytes("checkpoints/latest").decode().strip()
                manifest = json.loads(probe.get_bytes(f"checkpoints/{name}/manifest.json"))
                complete = all(probe.exists(f"checkpoints/{name}/{part}") for part in manifest["parts"])
            except StorageError:  # server down, or nothing committed yet
                continue
            observed_latest.append((name, complete))

    done = threading.Event()
    threads = [threading.Thread(target=chaos, daemon=True), threading.Thread(target=watch_latest, daemon=True)]
    for t in threads:
        t.start()
    pipeline = parse_pipeline(json.dumps(spec))
    result = run_training_pipeline(pipeline, workdir=tmp_path / "w", secrets=secrets)
    done.set()
    for t in threads:
        t.join(10)
    assert outage.is_set()
    assert result.succeeded, result.stages[0][1].reason
    log = (result.stages[0][1].log_dir / "master-0.log").read_text()
    store = published_store(root)
    assert "retrying" in log.lower() or "retry" in log.lower()
    assert store.get_bytes("checkpoints/latest").decode().strip() == "step-00000030"
    assert observed_latest and all(complete for _, complete in observed_latest), observed_latest
    assert {parse_step_name(n) for n, _ in observed_latest} <= {10, 20, 30}
    assert store.exists("hf/model.safetensors.index.json")


def metrics_log(stage_uri: str) -> list[dict]:
    """The step records of rank 0's JSONL metrics log in a stage output."""
    lines = published_store(open_store(stage_uri)).get_bytes("metrics/rank-0.jsonl").decode().splitlines()
    return [r for r in map(json.loads, filter(str.strip, lines)) if r.get("event", "step") == "step"]


def test_prometheus_scrapes_loss_and_throughput_of_a_real_pretraining_run(
    tmp_path, stage_assets, make_pretrain_spec, prometheus
):
    spec = make_pretrain_spec(
        "scraped", f"file://{tmp_path}/store", stage_assets, replicas=1, maxSteps=1000, checkpointEvery=1000
    )

    def listener(event, data):
        if event == "started" and data["metrics_port"]:  # the port the runner gave this "pod"
            prometheus.set_targets([f"127.0.0.1:{data['metrics_port']}"])

    results: list = []
    runner = threading.Thread(target=lambda: results.append(run(spec, tmp_path / "w", listener)[1]), daemon=True)
    runner.start()
    try:
        first = prometheus.wait_for('zhinao_train_loss{pipeline="scraped",stage="pretrain"}', timeout=120)
        tps = prometheus.wait_for('zhinao_tokens_per_second{pipeline="scraped"}', timeout=30)
        prometheus.wait_for('zhinao_step{pipeline="scraped"} > 100', timeout=180)
    finally:
        runner.join(300)
    assert results and results[0].succeeded
    labels, value = first[0]
    assert labels["rank"] == "0" and labels["stage"] == "pretrain" and value > 0
    assert tps[0][1] > 0
    # Every scrape Prometheus stored is the run's own loss at the step it scraped. When the first scrape
    # lands depends on the machine's load, so "the loss fell" is read against the run's first step.
    [(_, losses)] = prometheus.query_series('zhinao_train_loss{pipeline="scraped"}[10m]')
    [(_, steps)] = prometheus.query_series('zhinao_step{pipeline="scraped"}[10m]')
    logged = {r["step"]: r["loss"] for r in metrics_log(f"file://{tmp_path}/store/scraped/pretrain")}
    loss_at = dict(losses)  # by scrape time: one series may have started a scrape before the other
    scraped = [(int(step), loss_at[t]) for t, step in steps if t in loss_at]
    assert len(scraped) >= 2 and [s for s, _ in scraped] == sorted(s for s, _ in scraped)
    for step, loss in scraped:  # the loss gauge is set just before the step gauge: a scrape between them sees step - 1
        assert any(loss == pytest.approx(logged.get(s, float("nan")), rel=1e-6) for s in (step, step + 1)), (step, loss)
    assert scraped[-1][0] > 100 and scraped[-1][1] < logged[1] - 1.0


@pytest.mark.parametrize("zero_stage", [1, 2, 3])
def test_deepspeed_zero_trains_with_two_ranks_and_checkpoints_every_rank_shard(
    tmp_path, stage_assets, make_pretrain_spec, zero_stage
):
    spec = make_pretrain_spec(
        f"zero{zero_stage}",
        f"file://{tmp_path}/store",
        stage_assets,
        replicas=1,
        nproc=2,
        zeroStage=zero_stage,
        maxSteps=6,
        warmupSteps=1,
        checkpointEvery=3,
    )
    pipeline, result = run(spec, tmp_path / "w")
    job = result.stages[0][1]
    assert result.succeeded, (job.log_dir / "master-0.log").read_text()[-3000:]
    out = stage_output(pipeline, "pretrain")
    manifest = json.loads(out.get_bytes("checkpoints/step-00000006/manifest.json"))
    shards = [p for p in manifest["parts"] if "optim_states" in p]
    assert len(shards) == 2, manifest["parts"]  # one optimizer partition per rank
    summary = json.loads(out.get_bytes("summary.json"))
    assert summary["loss_last"] < summary["loss_first"]
    model = AutoModelForCausalLM.from_pretrained(summary["hf"].removeprefix("file://"))
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("weight"))
