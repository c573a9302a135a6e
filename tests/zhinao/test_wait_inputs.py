"""The init container of every stage's pods (`python -m zhinao.wait_inputs`) on the real S3 server:
it waits until the upstream stage has published its run (zhinao.publication), then lets the pod start; it gives up at
its timeout with one line naming the missing input."""

import os
import subprocess
import sys
import time
import uuid

from zhinao.artifacts import StageOutput
from zhinao.config.runtime import StageRuntime
from zhinao.publication import publish


def spec_file(tmp_path, upstream_uri: str) -> dict[str, str]:
    rt = StageRuntime(
        pipeline="p",
        stage="pt",
        kind="pretrain",
        inputs={"tokenizer": upstream_uri, "corpus": "s3://elsewhere/corpus"},
        upstream=["tokenizer"],
        output="s3://x/pt",
    )
    path = tmp_path / "stage.json"
    path.write_text(rt.to_json())
    return {"ZHINAO_STAGE_SPEC_FILE": str(path)}


def waiter(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "zhinao.wait_inputs", "--interval", "0.2", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_waits_for_the_success_marker_then_lets_the_pod_start(s3_server, tmp_path):
    bucket = f"wait-{uuid.uuid4().hex[:8]}"
    upstream = s3_server.store(f"s3://{bucket}/runs/p/tok")
    run = upstream.child("_gen/0123456789abcdef")
    run.put_bytes("tokenizer/tokenizer.json", b"{}")  # output being written: not done yet
    proc = waiter({**s3_server.env(), **spec_file(tmp_path, upstream.uri)}, "--timeout", "120")
    try:
        time.sleep(2)
        StageOutput(run).write_summary({"done": True})  # finished, but not yet published
        time.sleep(2)
        assert proc.poll() is None, proc.communicate()[0]
        publish(upstream, "0123456789abcdef", {"kind": "tokenizer"})
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        s3_server.drop_bucket(bucket)
    assert proc.returncode == 0, out
    assert "stage pt waits for input tokenizer" in out
    assert f"input tokenizer is ready ({upstream.uri}/_published.json)" in out


def test_times_out_with_one_line_naming_the_missing_input(s3_server, tmp_path):
    uri = f"s3://wait-{uuid.uuid4().hex[:8]}/runs/p/tok"
    proc = waiter({**s3_server.env(), **spec_file(tmp_path, uri)}, "--timeout", "1")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert (
        out.strip()
        .splitlines()[-1]
        .endswith(
            f"timed out after 1s: input tokenizer of stage pt is not ready: {uri}/_published.json does not exist "
            "(the stage that writes it has not succeeded)"
        )
    )
    assert "Traceback" not in out


def test_an_unreadable_stage_spec_is_one_line(tmp_path):
    proc = waiter({"ZHINAO_STAGE_SPEC_FILE": str(tmp_path / "missing.json")})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and f"stage spec {tmp_path / 'missing.json'}: cannot read" in out
    assert "Traceback" not in out
