"""The operator at scale: N TrainingPipelines (default 1,000) against kmock's API emulator.

What runs: kmock (tests/servers/kube_mock.py) serves the Kubernetes API on 127.0.0.1 in this
process; the real operator (`run_operator`: kopf, the kubernetes client, our handlers) runs in a
child process, so its memory is measured alone. This process creates the pipelines one after
another, as fast as the API answers (a burst).

Measured:
- reconcile latency per pipeline: from just before its create call to the moment kmock accepts the
  create of its first PyTorchJob (stage 1; kmock stamps each create, same clock, no polling):
  p50, p90, p99, max;
- the operator's own time per reconcile (its zhinao_operator_reconcile_seconds histogram, scraped
  from /metrics): mean and bucket bounds of p50/p90/p99;
- total: from the first create to the last first job; creates/s and jobs/s;
- operator RSS (psutil): after start-up (idle), peak while working, and after all jobs exist;
- CPU: seconds on a CPU of the operator and of kmock's thread, and (Linux schedstat) seconds each
  was runnable but waiting for a CPU, so a busy shared machine shows in the result.

    python bench/operator_scale.py                 # 1,000 pipelines, writes bench/results/operator_scale.json
    python bench/operator_scale.py --pipelines 50  # a quick look

Anchors: docs/benchmarks-operator.md (performance-anchors.md section 5: reconcile p99 <= 1 s,
operator memory <= 500 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import date
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # servers.kube_mock: the emulator the operator tests use

NS = "bench"
RESULTS = ROOT / "bench" / "results" / "operator_scale.json"
POLL_S = 0.1  # how often this process checks whether every first job exists (not a latency resolution)


def pipeline_doc(name: str) -> dict:
    return {
        "apiVersion": "zhinao.ai/v1alpha1",
        "kind": "TrainingPipeline",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "storage": {
                "uri": "s3://bench/runs",
                "endpoint": "http://minio:9000",
                "credentials": {"secretRef": {"name": "s3"}},
            },
            "stages": [
                {"name": "tok", "kind": "tokenizer", "inputs": {"corpus": "s3://bench/corpus"}},
                {"name": "pt", "kind": "pretrain", "inputs": {"tokenizer": "stage://tok"}},
            ],
        },
    }


def serve_operator(kubeconfig: str, metrics_port: int, health_port: int) -> None:
    """Child process: the operator, watching NS only (as a namespaced install would)."""
    from zhinao_k8s.controller.k8s import Cluster, load_client
    from zhinao_k8s.controller.operator import run_operator

    run_operator(
        namespaces=[NS],
        metrics_port=metrics_port,
        health_port=health_port,
        bind="127.0.0.1",
        cluster=Cluster(load_client(kubeconfig)),
    )


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the operator did not become healthy")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def mib(n: int) -> float:
    return round(n / 2**20, 1)


def schedstat(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one): one thread, or all of a process's."""
    tids = [tid] if tid is not None else os.listdir(f"/proc/{pid}/task")
    on = wait = 0
    for t in tids:
        try:
            fields = Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()
        except OSError:  # no schedstat (not Linux) or the thread has gone
            continue
        on, wait = on + int(fields[0]), wait + int(fields[1])
    return on / 1e9, wait / 1e9


def _sample(pattern: str, text: str) -> float:
    """One sample's value; 0 when the series does not exist yet (a labelled series appears on first use)."""
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def reconcile_histogram(metrics_port: int) -> dict | None:
    """The operator's zhinao_operator_reconcile_seconds: count, mean, and the bucket upper bound
    that holds p50/p90/p99 (a histogram says no more than that)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    name = "zhinao_operator_reconcile_seconds"
    buckets = sorted(
        (float(le), float(v))
        for le, v in re.findall(rf'^{name}_bucket{{kind="TrainingPipeline",le="([^"]+)"}} (\S+)$', text, re.M)
    )
    count = _sample(rf'^{name}_count{{kind="TrainingPipeline"}} (\S+)$', text)
    total = _sample(rf'^{name}_sum{{kind="TrainingPipeline"}} (\S+)$', text)
    triggers = {
        k: int(float(v))
        for k, v in re.findall(
            r'^zhinao_operator_reconciles_total{kind="TrainingPipeline",trigger="([^"]+)"} (\S+)$', text, re.M
        )
    }

    def bound(q: float) -> float:
        return next(le for le, v in buckets if v >= q / 100 * count)

    return (
        {
            "count": int(count),
            "by_trigger": triggers,
            "mean_s": round(total / count, 4) if count else None,
            "p50_le_s": bound(50),
            "p90_le_s": bound(90),
            "p99_le_s": bound(99),
        }
        if count
        else None
    )


def run(n: int, timeout: float) -> dict:
    from kubernetes import client
    from servers.kube_mock import KubeMock

    from zhinao_k8s.controller.k8s import JOB_PLURAL, load_client
    from zhinao_k8s.runner.local import free_port

    workdir = Path(tempfile.mkdtemp(prefix="zhinao-opscale-"))
    kube = KubeMock(workdir).start()
    api = client.CustomObjectsApi(load_client(str(kube.kubeconfig)))
    metrics_port, health_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-operator", str(kube.kubeconfig), str(metrics_port), str(health_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "operator.log", "w"),
    )
    try:
        started = time.monotonic()
        wait_healthy(health_port, proc)
        startup_s = time.monotonic() - started
        op = psutil.Process(proc.pid)
        time.sleep(1.0)
        rss_idle = op.memory_info().rss

        created_at: dict[str, float] = {}
        seen_at: dict[str, float] = {}

        def first_jobs() -> dict[str, float]:
            # kmock's own stamp of each accepted PyTorchJob create, on this process's monotonic clock.
            return {
                name[: -len("-tok")]: t
                for (ns, name), t in kube.created(JOB_PLURAL).items()
                if ns == NS and name.endswith("-tok")
            }

        peak = [rss_idle]
        sampling = threading.Event()

        def sampler() -> None:
            while not sampling.is_set():
                try:
                    peak[0] = max(peak[0], op.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.2)

        threading.Thread(target=sampler, daemon=True).start()
        kmock_tid = kube._thread.native_id
        load_before = os.getloadavg()
        cpu0 = op.cpu_times()
        sched0 = schedstat(proc.pid), schedstat(os.getpid(), kmock_tid)

        t0 = time.monotonic()
        for i in range(n):
            name = f"p{i:04d}"
            created_at[name] = time.monotonic()
            api.create_namespaced_custom_object("zhinao.ai", "v1alpha1", NS, "trainingpipelines", pipeline_doc(name))
        create_s = time.monotonic() - t0
        deadline = time.monotonic() + timeout
        while True:
            seen_at = first_jobs()
            if len(seen_at) >= n or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        finished = len(seen_at) >= n
        total_s = (max(seen_at.values()) if seen_at else time.monotonic()) - t0
        cpu1 = op.cpu_times()
        sched1 = schedstat(proc.pid), schedstat(os.getpid(), kmock_tid)
        load_after = os.getloadavg()
        time.sleep(1.0)
        rss_after = op.memory_info().rss
        sampling.set()
        reconciles = reconcile_histogram(metrics_port)
        latencies = [seen_at[k] - created_at[k] for k in created_at if k in seen_at]
        operator_cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        return {
            "date": date.today().isoformat(),
            "machine": {
                "cpus": os.cpu_count(),
                "arch": platform.machine(),
                "python": platform.python_version(),
                "gpu": None,
                "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
            },
            "pipelines": n,
            "completed": len(latencies),
            "finished_within_timeout": finished,
            "operator_startup_s": round(startup_s, 2),
            "create_burst_s": round(create_s, 2),
            "creates_per_s": round(n / create_s, 1),
            "total_s": round(total_s, 2),
            "first_jobs_per_s": round(len(latencies) / total_s, 1) if total_s > 0 else None,
            "reconcile_latency_s": {
                "p50": round(percentile(latencies, 50), 3),
                "p90": round(percentile(latencies, 90), 3),
                "p99": round(percentile(latencies, 99), 3),
                "max": round(max(latencies), 3),
                "mean": round(statistics.fmean(latencies), 3),
            }
            if latencies
            else None,
            "operator_reconcile_s": reconciles,
            "operator_rss_mib": {"idle": mib(rss_idle), "peak": mib(peak[0]), "after": mib(rss_after)},
            "cpu_s": {
                "operator_on_cpu": round(operator_cpu_s, 1),
                "operator_on_cpu_per_pipeline": round(operator_cpu_s / n, 4),
                "operator_waiting_for_cpu": round(sched1[0][1] - sched0[0][1], 1),
                "kmock_thread_on_cpu": round(sched1[1][0] - sched0[1][0], 1),
                "kmock_thread_waiting_for_cpu": round(sched1[1][1] - sched0[1][1], 1),
            },
            "latency_clock": "kmock's stamp of the first PyTorchJob create (same process, monotonic)",
            "goals": {"reconcile_p99_s": 1.0, "operator_memory_mib": 500},
        }
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        kube.stop()


def table(r: dict) -> str:
    lat = r["reconcile_latency_s"] or {}
    rec = r["operator_reconcile_s"] or {}
    rss = r["operator_rss_mib"]
    cpu = r["cpu_s"]
    rows = [
        ("pipelines created / first jobs seen", f"{r['pipelines']} / {r['completed']}", ""),
        ("create burst", f"{r['create_burst_s']} s ({r['creates_per_s']}/s)", ""),
        ("total (first create -> last first job)", f"{r['total_s']} s ({r['first_jobs_per_s']} jobs/s)", ""),
        ("reconcile latency p50", f"{lat.get('p50')} s", ""),
        ("reconcile latency p90", f"{lat.get('p90')} s", ""),
        ("reconcile latency p99", f"{lat.get('p99')} s", "goal <= 1 s"),
        ("reconcile latency max", f"{lat.get('max')} s", ""),
        (
            "operator time per reconcile (mean; p50/p90/p99 <=)",
            f"{rec.get('mean_s')} s; {rec.get('p50_le_s')} / {rec.get('p90_le_s')} / {rec.get('p99_le_s')} s",
            "",
        ),
        ("operator RSS idle / peak / after", f"{rss['idle']} / {rss['peak']} / {rss['after']} MiB", "goal <= 500 MB"),
        (
            "operator CPU (per pipeline) / waiting for a CPU",
            f"{cpu['operator_on_cpu']} s ({cpu['operator_on_cpu_per_pipeline']} s) / {cpu['operator_waiting_for_cpu']} s",
            "",
        ),
        (
            "kmock thread CPU / waiting for a CPU",
            f"{cpu['kmock_thread_on_cpu']} s / {cpu['kmock_thread_waiting_for_cpu']} s",
            "",
        ),
    ]
    w = max(len(a) for a, _, _ in rows)
    v = max(len(b) for _, b, _ in rows)
    return "\n".join(f"{a:<{w}}  {b:<{v}}  {c}".rstrip() for a, b, c in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=240, help="seconds to wait for every first job")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--serve-operator", nargs=3, metavar=("KUBECONFIG", "METRICS_PORT", "HEALTH_PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve_operator:
        kubeconfig, mport, hport = args.serve_operator
        serve_operator(kubeconfig, int(mport), int(hport))
        return 0
    result = run(args.pipelines, args.timeout)
    print(table(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0 if result["finished_within_timeout"] else 1


if __name__ == "__main__":
    sys.exit(main())
