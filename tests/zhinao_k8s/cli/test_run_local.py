"""`zhinao-k8s run` as users run it (a subprocess) on real stages: on S3 with the credentials only in
a `--secret` file, a params block larger than one environment variable may hold, and SIGTERM in the
middle of a run, after which no replica process may survive."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml
from stage_runs import LIBRARY

from zhinao.artifacts import StageOutput
from zhinao.data.demo_corpus import build_demo_corpus

pytestmark = pytest.mark.slow

MAX_ARG_STRLEN = 128 * 1024  # Linux: the most one environment variable (or argument) may hold


def cli_env(**extra: str) -> dict[str, str]:
    """The user's environment without any storage settings: the CLI must take them from the spec."""
    drop = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "ZHINAO_S3_ENDPOINT")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "OMP_NUM_THREADS": "1", **extra}


def zhinao_k8s(*args: str) -> list[str]:
    return [sys.executable, "-m", "zhinao_k8s", *args]


def data_spec(name: str, storage: dict, corpus: str, **params) -> dict:
    return {
        "apiVersion": "zhinao.ai/v1alpha1",
        "kind": "TrainingPipeline",
        "metadata": {"name": name},
        "spec": {
            "storage": storage,
            "metrics": {"enabled": False},
            "stages": [{"name": "data", "kind": "data", "replicas": 2, "inputs": {"corpus": corpus}, "params": params}],
        },
    }


def test_run_on_s3_with_secret_file_credentials_and_a_params_block_over_128_kib(s3_server, tmp_path, monkeypatch):
    bucket = f"run-{uuid.uuid4().hex[:8]}"
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)  # only to write the corpus from here
    build_demo_corpus(f"s3://{bucket}/src", n_docs=60)
    blacklist = [f"b{i:05d}.example.com" for i in range(7000)]
    storage = {
        "uri": f"s3://{bucket}/runs",
        "endpoint": s3_server.endpoint,
        "credentials": {"secretRef": {"name": "s3"}},
    }
    spec = data_spec("s3run", storage, f"s3://{bucket}/src/corpus", urlFilter={"blacklist": blacklist})
    assert len(json.dumps(spec["spec"]["stages"][0]["params"])) > MAX_ARG_STRLEN
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))  # JSON is YAML; compact, under the 256 KiB spec cap
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s3"},
        "stringData": {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key},
    }
    (tmp_path / "secret.yaml").write_text(yaml.safe_dump(secret))
    try:
        out = subprocess.run(
            zhinao_k8s("run", str(tmp_path / "spec.yaml"), "--secret", str(tmp_path / "secret.yaml"))
            + ["--workdir", str(tmp_path / "w")],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        summary = StageOutput(s3_server.store(f"s3://{bucket}/runs/s3run/data")).read_summary()
    finally:
        s3_server.drop_bucket(bucket)
    assert "Succeeded" in out.stdout and "Traceback" not in out.stdout + out.stderr
    # The summary read back after the run, through the spec's endpoint and the Secret's keys:
    assert f"{summary['docs_written']:,} documents kept" in out.stdout


def test_sigterm_stops_every_replica_and_leaves_no_process(tmp_path):
    store = tmp_path / "store"
    build_demo_corpus(f"file://{store}", n_docs=3000)
    spec = data_spec("sig", {"uri": f"file://{store}"}, f"file://{store}/corpus")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    cli = subprocess.Popen(
        zhinao_k8s("run", str(tmp_path / "spec.yaml"), "--workdir", str(tmp_path / "w")),
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: dict[int, psutil.Process] = {}
    try:
        # Wait until both replicas run their training processes (torchrun's workers: grandchildren).
        deadline = time.time() + 300
        while time.time() < deadline and cli.poll() is None:
            procs = psutil.Process(cli.pid).children(recursive=True)
            seen.update({p.pid: p for p in procs})
            workers = [p for p in procs if p.ppid() != cli.pid]
            if len(workers) >= 2:
                break
            time.sleep(0.1)
        assert cli.poll() is None, "the run ended before it could be interrupted"
        cli.send_signal(signal.SIGTERM)
        out, _ = cli.communicate(timeout=120)
    finally:
        cli.kill()
    assert cli.returncode == 143, out[-3000:]
    assert "terminated" in out and "Traceback" not in out
    alive = [p for p in seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert len(seen) >= 4 and not alive, [(p.pid, p.cmdline()) for p in alive]
    assert not Path(store / "sig" / "data" / "_published.json").exists()  # nothing half-done is published


def tokenizer_spec(store: Path, vocab: int) -> dict:
    return {
        "apiVersion": "zhinao.ai/v1alpha1",
        "kind": "TrainingPipeline",
        "metadata": {"name": "fp"},
        "spec": {
            "storage": {"uri": f"file://{store}"},
            "metrics": {"enabled": False},
            "stages": [
                {
                    "name": "tok",
                    "kind": "tokenizer",
                    "backoffLimit": 0,
                    "inputs": {"corpus": f"file://{store}/corpus"},
                    "params": {"vocabSize": vocab},
                }
            ],
        },
    }


def run_spec(tmp_path: Path, spec: dict, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / f"spec-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(spec))
    cmd = zhinao_k8s("run", str(path), "--workdir", str(tmp_path / "w"), *args)
    return subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600)


def test_a_rerun_resumes_its_own_output_refuses_another_runs_and_overwrite_replaces_it(tmp_path):
    store = tmp_path / "store"
    build_demo_corpus(f"file://{store}", n_docs=60)
    for attempt in ("first", "same spec again"):
        out = run_spec(tmp_path, tokenizer_spec(store, 512))
        assert out.returncode == 0, (attempt, out.stdout[-3000:])
    out = run_spec(tmp_path, tokenizer_spec(store, 600))
    assert out.returncode == 1, out.stdout[-3000:]
    flat = " ".join(out.stdout.split())
    assert "OutputMismatch" in flat and "params.vocabSize: 512 -> 600" in flat and "--overwrite" in flat
    log = (tmp_path / "w" / "logs" / "fp-tok" / "master-0.log").read_text()
    # one line; torchrun reports the failed child with a traceback of its own, none comes from our code
    assert "was written by a different run" in log and f'File "{LIBRARY}' not in log, log[-3000:]
    out = run_spec(tmp_path, tokenizer_spec(store, 600), "--overwrite", "tok")
    assert out.returncode == 0, out.stdout[-3000:]
    assert StageOutput.at(f"file://{store}/fp/tok").read_summary()["vocab_size"] == 600


def test_a_second_writer_of_one_output_fails_naming_the_holder(tmp_path):
    from zhinao.lease import Lease
    from zhinao.storage import FileStore

    store = tmp_path / "store"
    build_demo_corpus(f"file://{store}", n_docs=60)
    Lease(FileStore(store / "fp" / "tok"), "the other run").acquire()
    out = run_spec(tmp_path, tokenizer_spec(store, 512))
    assert out.returncode == 1
    flat = " ".join(out.stdout.split())
    assert "LeaseHeld" in flat and "the output is being written by the other run" in flat, flat[-2000:]
    assert not (store / "fp" / "tok" / "_published.json").exists()


def test_a_reader_during_an_overwrite_sees_the_old_run_or_the_new_one_never_a_mix(tmp_path):
    """While `run --overwrite` replaces a published tokenizer, a reader keeps resolving the output
    and reading two of its files: every read is wholly the old run's or wholly the new one's."""
    store = tmp_path / "store"
    build_demo_corpus(f"file://{store}", n_docs=60)
    assert run_spec(tmp_path, tokenizer_spec(store, 512)).returncode == 0
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def read_until_stopped() -> None:
        while not stop.is_set():
            output = StageOutput.at(f"file://{store}/fp/tok")
            summary = output.read_summary()
            vocab = json.loads(output.store.get_bytes("tokenizer/tokenizer.json"))["model"]["vocab"]
            seen.append((summary["vocab_size"], len(vocab)))

    reader = threading.Thread(target=read_until_stopped, daemon=True)
    reader.start()
    try:
        out = run_spec(tmp_path, tokenizer_spec(store, 600), "--overwrite", "tok")
        time.sleep(0.2)
    finally:
        stop.set()
        reader.join(10)
    assert out.returncode == 0, out.stdout[-3000:]
    assert not reader.is_alive()
    assert {summary for summary, _ in seen} == {512, 600}, "the reader saw both runs"
    assert all(summary == vocab for summary, vocab in seen), sorted(set(seen))
    # The new run is published; the one it replaced stays one generation for readers that resolved it.
    assert len(list((store / "fp" / "tok" / "_gen").iterdir())) == 2
