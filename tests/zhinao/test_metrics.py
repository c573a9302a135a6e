"""zhinao.metrics: FLOPs arithmetic, Prometheus series, JSONL log, HTTP exposition, and a real
Prometheus scraping a real (tiny) PyTorch training run in a subprocess."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from servers.prometheus import PrometheusServer, prometheus  # noqa: F401  (fixture; tests/ is on sys.path)

from zhinao import metrics as zm
from zhinao.metrics import PICK_FREE_PORT, TrainingMetrics, flops_per_token, metrics_port_from_env, peak_flops
from zhinao_k8s.runner.local import free_port

REPO = Path(__file__).resolve().parents[2]
LBL = {"pipeline": "p1", "stage": "pretrain", "rank": "0"}


def _metrics(tmp_path: Path, **kw) -> TrainingMetrics:
    kw.setdefault("pipeline", "p1")
    kw.setdefault("stage", "pretrain")
    kw.setdefault("rank", 0)
    kw.setdefault("port", None)
    kw.setdefault("log_path", tmp_path / "metrics.jsonl")
    return TrainingMetrics(**kw)


def _step(m: TrainingMetrics, step: int = 1, **kw) -> dict:
    args = dict(step=step, loss=2.5, lr=3e-4, grad_norm=0.75, tokens=8192, samples=4, step_seconds=0.5)
    args.update(kw)
    return m.record_step(**args)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------ FLOPs


def test_flops_per_token_hand_computed():
    # GPT-2 small-ish: N = 85M matmul params, 12 layers, d = 768, T = 1024.
    # 6 * 85e6 = 510e6; 12 * 12 * 768 * 1024 = 113_246_208.
    assert flops_per_token(n_params=85_000_000, n_layers=12, hidden=768, seq_len=1024) == 510_000_000 + 113_246_208
    assert flops_per_token(n_params=10, n_layers=0, hidden=4, seq_len=8) == 60.0
    with pytest.raises(ValueError):
        flops_per_token(n_params=-1, n_layers=1, hidden=1, seq_len=1)


def test_peak_flops_env_overrides(monkeypatch):
    monkeypatch.setenv("ZHINAO_PEAK_FLOPS", "1.5e14")
    assert peak_flops("cpu") == (1.5e14, "env ZHINAO_PEAK_FLOPS")
    assert peak_flops("cuda:3")[0] == 1.5e14  # never touches the (absent) GPU
    monkeypatch.setenv("ZHINAO_PEAK_FLOPS", "fast")
    with pytest.raises(ValueError, match="ZHINAO_PEAK_FLOPS"):
        peak_flops("cpu")


def test_peak_flops_cpu_is_measured_once(monkeypatch):
    monkeypatch.delenv("ZHINAO_PEAK_FLOPS", raising=False)
    t0 = time.perf_counter()
    value, how = peak_flops("cpu")
    first = time.perf_counter() - t0
    assert how.startswith("measured") and "cpu" in how
    assert 1e8 < value < 1e14  # any CPU does between 0.1 GFLOP/s and 100 TFLOP/s fp32
    t0 = time.perf_counter()
    assert peak_flops("cpu") == (value, how)  # cached per process
    assert time.perf_counter() - t0 < first / 10 + 0.01


def test_peak_flops_cuda_table(monkeypatch):
    monkeypatch.delenv("ZHINAO_PEAK_FLOPS", raising=False)
    torch = pytest.importorskip("torch")
    for name, expected in [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L40S", 362e12),
    ]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda _dev, n=name: n)
        value, how = peak_flops("cuda:0")
        assert value == expected and how.startswith("table") and name in how


# ------------------------------------------------------------------------------ Prometheus series


def test_record_step_updates_gauges_and_counters(tmp_path):
    m = _metrics(tmp_path, flops_per_token=1000.0, peak_flops=1e8)
    try:
        rec = _step(m)
        g = m.registry.get_sample_value
        assert g("zhinao_train_loss", LBL) == 2.5
        assert g("zhinao_learning_rate", LBL) == 3e-4
        assert g("zhinao_grad_norm", LBL) == 0.75
        assert g("zhinao_step_seconds", LBL) == 0.5
        assert g("zhinao_tokens_per_second", LBL) == 16384.0  # 8192 / 0.5
        assert g("zhinao_samples_per_second", LBL) == 8.0
        assert g("zhinao_mfu", LBL) == pytest.approx(16384.0 * 1000.0 / 1e8)  # 0.16384
        assert g("zhinao_step", LBL) == 1
        assert g("zhinao_memory_bytes", {**LBL, "kind": "rss"}) > 1e6
        assert g("zhinao_tokens_total", LBL) == 8192
        assert g("zhinao_samples_total", LBL) == 4
        assert g("zhinao_steps_total", LBL) == 1
        assert rec["mfu"] == pytest.approx(0.16384)

        _step(m, step=2, loss=2.0, tokens=4096, step_seconds=0.25)
        assert g("zhinao_train_loss", LBL) == 2.0
        assert g("zhinao_step", LBL) == 2
        assert g("zhinao_tokens_per_second", LBL) == 16384.0
        assert g("zhinao_tokens_total", LBL) == 8192 + 4096
        assert g("zhinao_steps_total", LBL) == 2
        assert m.tokens_total == 12288
    finally:
        m.close()


def test_mfu_not_set_without_flops_or_peak(tmp_path):
    for kw in ({}, {"flops_per_token": 100.0}, {"peak_flops": 1e9}):
        m = _metrics(tmp_path, log_path=None, registry=CollectorRegistry(), **kw)
        rec = _step(m)
        assert rec["mfu"] is None
        assert m.registry.get_sample_value("zhinao_mfu", LBL) is None
        assert m.registry.get_sample_value("zhinao_tokens_per_second", LBL) == 16384.0
        m.close()
    # a zero-length step gives no rates at all (rather than inf)
    m = _metrics(tmp_path, log_path=None, flops_per_token=100.0, peak_flops=1e9)
    rec = _step(m, step_seconds=0.0)
    assert rec["tokens_per_second"] is None and rec["mfu"] is None
    assert m.registry.get_sample_value("zhinao_tokens_per_second", LBL) is None
    m.close()


def test_extra_metrics_become_gauges(tmp_path):
    m = _metrics(tmp_path)
    try:
        rec = _step(m, reward_mean=0.25, kl=0.01)
        assert m.registry.get_sample_value("zhinao_reward_mean", LBL) == 0.25
        assert m.registry.get_sample_value("zhinao_kl", LBL) == 0.01
        assert rec["reward_mean"] == 0.25 and rec["kl"] == 0.01
        _step(m, step=2, kl=0.02, rm_accuracy=0.75)  # created lazily, any step
        assert m.registry.get_sample_value("zhinao_kl", LBL) == 0.02
        assert m.registry.get_sample_value("zhinao_rm_accuracy", LBL) == 0.75
        for bad in ("mfu", "tokens_total", "bad-name", "event", "train_loss"):
            with pytest.raises(ValueError):
                _step(m, step=3, **{bad: 1.0})
        assert m.registry.get_sample_value("zhinao_step", LBL) == 2  # rejected steps changed nothing
    finally:
        m.close()


def test_two_ranks_do_not_collide(tmp_path):
    a = _metrics(tmp_path, rank=0, log_path=tmp_path / "r0.jsonl", port=PICK_FREE_PORT, addr="127.0.0.1")
    b = _metrics(tmp_path, rank=1, log_path=tmp_path / "r1.jsonl", port=PICK_FREE_PORT, addr="127.0.0.1")
    try:
        assert a.registry is not b.registry and a.port != b.port
        _step(a, loss=1.0)
        _step(b, loss=9.0)
        assert a.registry.get_sample_value("zhinao_train_loss", LBL) == 1.0
        assert b.registry.get_sample_value("zhinao_train_loss", {**LBL, "rank": "1"}) == 9.0
        assert a.registry.get_sample_value("zhinao_train_loss", {**LBL, "rank": "1"}) is None
        body_b = urllib.request.urlopen(f"http://127.0.0.1:{b.port}/metrics", timeout=5).read().decode()
        assert 'zhinao_train_loss{pipeline="p1",rank="1",stage="pretrain"} 9.0' in body_b
        assert 'rank="0"' not in body_b
        assert [r["rank"] for r in _lines(tmp_path / "r0.jsonl")] == [0]
        assert [r["rank"] for r in _lines(tmp_path / "r1.jsonl")] == [1]
    finally:
        a.close()
        b.close()


def test_record_checkpoint(tmp_path):
    m = _metrics(tmp_path)
    _step(m)
    m.record_checkpoint(3.5, step=1)
    m.record_checkpoint(0.2, step=2)
    g = m.registry.get_sample_value
    assert g("zhinao_checkpoint_seconds", LBL) == 0.2
    assert g("zhinao_checkpoint_duration_seconds_count", LBL) == 2
    assert g("zhinao_checkpoint_duration_seconds_sum", LBL) == pytest.approx(3.7)
    assert g("zhinao_checkpoint_duration_seconds_bucket", {**LBL, "le": "5.0"}) == 2
    assert g("zhinao_checkpoint_duration_seconds_bucket", {**LBL, "le": "1.0"}) == 1
    m.close()
    ckpts = [r for r in _lines(tmp_path / "metrics.jsonl") if r["event"] == "checkpoint"]
    assert [(r["step"], r["seconds"]) for r in ckpts] == [(1, 3.5), (2, 0.2)]
    assert all(r["pipeline"] == "p1" and r["stage"] == "pretrain" and r["rank"] == 0 and r["ts"] > 0 for r in ckpts)


# ----------------------------------------------------------------------------------------- JSONL


def test_jsonl_records(tmp_path):
    path = tmp_path / "sub" / "dir" / "metrics.jsonl"  # parents are created
    m = _metrics(tmp_path, log_path=path, flops_per_token=1000.0, peak_flops=1e8)
    t0 = time.time()
    r1 = _step(m, step=1)
    # flushed per record: readable before close
    assert _lines(path) == [r1]
    _step(m, step=2, loss=float("nan"), reward_mean=0.5)
    m.close()
    m.close()  # idempotent
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    recs = [json.loads(line) for line in lines]
    required = {
        "ts", "step", "loss", "lr", "grad_norm", "tokens_per_second", "samples_per_second", "step_seconds",
        "mfu", "tokens_total", "memory_rss_bytes", "pipeline", "stage", "rank",
    }  # fmt: skip
    for rec in recs:
        assert required <= rec.keys()
        assert rec["event"] == "step"
        assert t0 - 1 < rec["ts"] < time.time() + 1
        assert (rec["pipeline"], rec["stage"], rec["rank"]) == ("p1", "pretrain", 0)
        assert rec["memory_rss_bytes"] > 1e6
    assert recs[0]["step"] == 1 and recs[0]["loss"] == 2.5 and recs[0]["lr"] == 3e-4
    assert recs[0]["tokens_per_second"] == 16384.0 and recs[0]["mfu"] == pytest.approx(0.16384)
    assert recs[1]["loss"] is None  # a NaN loss is logged as null, the file stays strict JSON
    assert recs[1]["reward_mean"] == 0.5
    assert [r["tokens_total"] for r in recs] == [8192, 16384]


def test_jsonl_appends_across_instances(tmp_path):
    for step in (1, 2):
        m = _metrics(tmp_path)
        _step(m, step=step)
        m.close()
    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2]


# ------------------------------------------------------------------------------------------ HTTP


def test_http_exposition_on_127_0_0_1(tmp_path, monkeypatch):
    monkeypatch.setenv("ZHINAO_METRICS_ADDR", "127.0.0.1")  # the env var picks the bind address
    m = _metrics(tmp_path, port=PICK_FREE_PORT, flops_per_token=1000.0, peak_flops=1e8)
    try:
        assert m._server.server_address[0] == "127.0.0.1"
        _step(m, reward_mean=0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain")
            body = resp.read().decode()
        lbl = 'pipeline="p1",rank="0",stage="pretrain"'
        assert "# TYPE zhinao_train_loss gauge" in body
        assert f"zhinao_train_loss{{{lbl}}} 2.5" in body
        assert (
            "# TYPE zhinao_tokens_total counter" in body or "# TYPE zhinao_tokens counter" in body
        )  # client versions differ
        assert f"zhinao_tokens_total{{{lbl}}} 8192.0" in body
        assert f"zhinao_mfu{{{lbl}}} 0.16384" in body
        assert f"zhinao_reward_mean{{{lbl}}} 0.5" in body
        assert f'zhinao_memory_bytes{{kind="rss",{lbl}}}' in body
    finally:
        m.close()
    with pytest.raises(urllib.error.URLError):  # server stopped
        urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=2)


def test_port_none_zero_and_explicit(tmp_path):
    for port in (None, 0):
        m = _metrics(tmp_path, port=port, log_path=None)
        assert m.port is None
        m.close()
    port = free_port()
    m = _metrics(tmp_path, port=port, addr="127.0.0.1", log_path=None)
    try:
        assert m.port == port
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).status == 200
    finally:
        m.close()
    with pytest.raises(ValueError):
        _metrics(tmp_path, port=-2, log_path=None)


def test_metrics_port_from_env():
    assert metrics_port_from_env(0, {}) is None
    assert metrics_port_from_env(3, {"ZHINAO_METRICS_PORT": "0"}) is None
    assert metrics_port_from_env(0, {"ZHINAO_METRICS_PORT": "9400"}) == 9400
    assert metrics_port_from_env(3, {"ZHINAO_METRICS_PORT": "9400"}) == 9403


def test_module_does_not_need_torch():
    code = "import sys, zhinao.metrics; assert 'torch' not in sys.modules, 'metrics imported torch'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
    assert zm.LABELS == ("pipeline", "stage", "rank")


# ------------------------------------------------------------------------ real Prometheus scrape

TRAIN_SCRIPT = r"""
import os, sys, time
import torch
from zhinao.metrics import TrainingMetrics, flops_per_token, peak_flops

port, steps, sleep, log_path = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
torch.set_num_threads(1)
X = torch.randn(512, 16)
y = X @ (2 * torch.randn(16, 1)) + 0.01 * torch.randn(512, 1)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
n_matmul = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
m = TrainingMetrics(
    pipeline="tiny", stage="fit", rank=int(os.environ.get("RANK", "0")), port=port, addr="127.0.0.1",
    log_path=log_path, flops_per_token=flops_per_token(n_params=n_matmul, n_layers=0, hidden=32, seq_len=1),
    peak_flops=peak_flops("cpu")[0],
)
print("READY", m.port, flush=True)
sys.stdin.readline()  # "go": the test saw Prometheus scrape us
for step in range(1, steps + 1):
    t0 = time.perf_counter()
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(X), y)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
    opt.step()
    time.sleep(sleep)
    m.record_step(step=step, loss=loss.item(), lr=opt.param_groups[0]["lr"], grad_norm=float(grad_norm),
                  tokens=X.shape[0], samples=X.shape[0], step_seconds=time.perf_counter() - t0)
print("DONE", flush=True)
sys.stdin.readline()  # keep serving until the test closes stdin
m.close()
"""


class _Lines:
    """Lines of a subprocess's stdout, read by a thread so waits can time out."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.q.put(line.rstrip("\n"))
        self.q.put("")  # EOF

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line
            if line == "":
                raise AssertionError(f"trainer exited before printing {prefix!r}")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_prometheus_scrapes_real_training(prometheus: PrometheusServer, tmp_path):  # noqa: F811
    steps, sleep = 250, 0.02
    port = free_port()
    target = f"127.0.0.1:{port}"
    prometheus.set_targets([target])  # discovery (throttled to ~5 s) overlaps with torch's import
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "RANK": "0"}
    stderr = open(tmp_path / "trainer.stderr", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAIN_SCRIPT, str(port), str(steps), str(sleep), str(tmp_path / "train.jsonl")],
        cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
    )  # fmt: skip
    try:
        out = _Lines(proc)
        try:
            assert out.expect("READY", 60) == f"READY {port}"
        except (queue.Empty, AssertionError):
            stderr.seek(0)
            pytest.fail(f"trainer did not start:\n{stderr.read()[-3000:]}")
        prometheus.wait_until_up(target, timeout=30)
        proc.stdin.write("go\n")
        proc.stdin.flush()

        sel = f'zhinao_train_loss{{job="zhinao",instance="{target}"}}'
        rows = prometheus.wait_for(sel, timeout=20)
        assert len(rows) == 1
        labels, first_loss = rows[0]
        assert {k: labels[k] for k in ("pipeline", "stage", "rank")} == {
            "pipeline": "tiny",
            "stage": "fit",
            "rank": "0",
        }

        out.expect("DONE", 60)
        # the last step's values, once scraped
        prometheus.wait_for(f'zhinao_step{{instance="{target}"}} == {steps}', timeout=15)
        ((labels, last_loss),) = prometheus.query(sel)
        assert last_loss < first_loss, (first_loss, last_loss)

        # every scraped loss over the run: several distinct samples, decreasing
        ((_, series),) = prometheus.query_series(f"{sel}[5m]")
        values = [v for _, v in series]
        distinct = [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]
        assert len(distinct) >= 3, values
        assert all(b < a for a, b in zip(distinct, distinct[1:])), values
        assert distinct[-1] < distinct[0] / 2, values

        ((tl, tps),) = prometheus.query(f'zhinao_tokens_per_second{{instance="{target}"}}')
        assert (tl["pipeline"], tl["stage"], tl["rank"], tl["job"]) == ("tiny", "fit", "0", "zhinao")
        assert 0 < tps <= 512 / sleep  # each step sleeps `sleep`, so at most 512 tokens per `sleep`
        ((_, total),) = prometheus.query(f'zhinao_tokens_total{{instance="{target}"}}')
        assert total == 512 * steps
        ((_, mfu),) = prometheus.query(f'zhinao_mfu{{instance="{target}"}}')
        assert 0 < mfu < 1
    finally:
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()  # EOF: the trainer closes its metrics and exits
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        stderr.close()
    assert proc.returncode == 0
    recs = _lines(tmp_path / "train.jsonl")
    assert [r["step"] for r in recs] == list(range(1, steps + 1))
    assert recs[-1]["loss"] == pytest.approx(last_loss)
