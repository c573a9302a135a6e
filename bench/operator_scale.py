"""The operator at scale: N TrainingPipelines (default 1,000) against kmock's API emulator.

What runs: kmock (tests/zhinao_k8s/kube_mock.py) serves the Kubernetes API on 127.0.0.1 in this
process; the real operator (`run_operator`: kopf, the kubernetes client, our handlers) runs in a
child process, so its memory is measured alone. This process creates the pipelines one after
another, as fast as the API answers (a burst), and watches PyTorchJobs.

Measured:
- reconcile latency per pipeline: from just before its create call to the moment the watch sees its
  first PyTorchJob (stage 1): p50, p90, p99, max;
- total: from the first create to the last first-job seen; creates/s and jobs/s;
- operator RSS (psutil): after start-up (idle), peak while working, and after all jobs exist.

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
sys.path.insert(0, str(ROOT / "tests" / "zhinao_k8s"))  # kube_mock: the emulator the operator tests use

NS = "bench"
RESULTS = ROOT / "bench" / "results" / "operator_scale.json"
POLL_S = 0.1


def pipeline_doc(name: str) -> dict:
    return {
        "apiVersion": "zhinao.ai/v1alpha1",
        "kind": "TrainingPipeline",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "storage": {"uri": "s3://bench/runs", "endpoint": "http://minio:9000",
                        "credentials": {"secretRef": {"name": "s3"}}},
            "stages": [
                {"name": "tok", "kind": "tokenizer", "inputs": {"corpus": "s3://bench/corpus"}},
                {"name": "pt", "kind": "pretrain", "inputs": {"tokenizer": "stage://tok"}},
            ],
        },
    }


def serve_operator(kubeconfig: str, metrics_port: int, health_port: int) -> None:
    """Child process: the operator, watching NS only (as a namespaced install would)."""
    from zhinao_k8s.k8s import Cluster, load_client
    from zhinao_k8s.settings import run_operator

    run_operator(namespaces=[NS], metrics_port=metrics_port, health_port=health_port, bind="127.0.0.1",
                 cluster=Cluster(load_client(kubeconfig)))


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


def run(n: int, timeout: float) -> dict:
    from kube_mock import KubeMock, free_port
    from kubernetes import client

    from zhinao_k8s.k8s import JOB_GROUP, JOB_PLURAL, JOB_VERSION, load_client

    workdir = Path(tempfile.mkdtemp(prefix="zhinao-opscale-"))
    kube = KubeMock(workdir).start()
    api = client.CustomObjectsApi(load_client(str(kube.kubeconfig)))
    metrics_port, health_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, __file__, "--serve-operator", str(kube.kubeconfig), str(metrics_port), str(health_port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(workdir / "operator.log", "w"))
    try:
        started = time.monotonic()
        wait_healthy(health_port, proc)
        startup_s = time.monotonic() - started
        op = psutil.Process(proc.pid)
        time.sleep(1.0)
        rss_idle = op.memory_info().rss

        created_at: dict[str, float] = {}
        seen_at: dict[str, float] = {}
        all_seen = threading.Event()
        stop_polling = threading.Event()
        watching = threading.Event()

        def watcher() -> None:
            # Polls a list (every POLL_S) rather than holding a watch: a watch stream in this process
            # slowed kmock's answers to the creates down to ~1 s each. Latencies are thus up to
            # POLL_S (+ one list call) late, never early.
            watching.set()
            while not all_seen.is_set() and not stop_polling.is_set():
                items = api.list_namespaced_custom_object(JOB_GROUP, JOB_VERSION, NS, JOB_PLURAL)["items"]
                now = time.monotonic()
                for job in items:
                    name = job["metadata"]["name"]
                    if name.endswith("-tok"):
                        seen_at.setdefault(name[: -len("-tok")], now)
                if len(seen_at) >= n:
                    all_seen.set()
                time.sleep(POLL_S)

        peak = [rss_idle]
        sampling = threading.Event()

        def sampler() -> None:
            while not sampling.is_set():
                try:
                    peak[0] = max(peak[0], op.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.2)

        threading.Thread(target=watcher, daemon=True).start()
        threading.Thread(target=sampler, daemon=True).start()
        watching.wait(5)
        time.sleep(0.5)  # let the watch connect before the first create

        t0 = time.monotonic()
        for i in range(n):
            name = f"p{i:04d}"
            created_at[name] = time.monotonic()
            api.create_namespaced_custom_object("zhinao.ai", "v1alpha1", NS, "trainingpipelines", pipeline_doc(name))
        create_s = time.monotonic() - t0
        finished = all_seen.wait(timeout)
        stop_polling.set()
        total_s = (max(seen_at.values()) if seen_at else time.monotonic()) - t0
        time.sleep(1.0)
        rss_after = op.memory_info().rss
        sampling.set()
        latencies = [seen_at[k] - created_at[k] for k in created_at if k in seen_at]
        return {
            "date": date.today().isoformat(),
            "machine": {"cpus": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version(),
                        "gpu": None},
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
            } if latencies else None,
            "operator_rss_mib": {"idle": mib(rss_idle), "peak": mib(peak[0]), "after": mib(rss_after)},
            "latency_resolution_s": POLL_S,
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
    rss = r["operator_rss_mib"]
    rows = [
        ("pipelines created / first jobs seen", f"{r['pipelines']} / {r['completed']}", ""),
        ("create burst", f"{r['create_burst_s']} s ({r['creates_per_s']}/s)", ""),
        ("total (first create -> last first job)", f"{r['total_s']} s ({r['first_jobs_per_s']} jobs/s)", ""),
        ("reconcile latency p50", f"{lat.get('p50')} s", ""),
        ("reconcile latency p90", f"{lat.get('p90')} s", ""),
        ("reconcile latency p99", f"{lat.get('p99')} s", "goal <= 1 s"),
        ("reconcile latency max", f"{lat.get('max')} s", ""),
        ("operator RSS idle / peak / after", f"{rss['idle']} / {rss['peak']} / {rss['after']} MiB", "goal <= 500 MB"),
    ]
    w = max(len(a) for a, _, _ in rows)
    v = max(len(b) for _, b, _ in rows)
    return "\n".join(f"{a:<{w}}  {b:<{v}}  {c}".rstrip() for a, b, c in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=240, help="seconds to wait for every first job")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--serve-operator", nargs=3, metavar=("KUBECONFIG", "METRICS_PORT", "HEALTH_PORT"),
                        help=argparse.SUPPRESS)
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
