"""The local PyTorchJob runner on hand-written jobs whose containers are small Python programs:
Kubeflow's restart semantics, kubelet's way of stopping pods, ConfigMap volumes, init containers,
and the failure line users read."""

import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from zhinao_k8s.runner.local import LocalJobRunner, last_error_line

FAST_BACKOFF = (0.1, 0.2)


def job(script: str, *, replicas: int = 2, policy: str = "OnFailure", backoff_limit: int = 3, grace: int = 1, **pod):
    """A PyTorchJob whose every replica runs `script` (its replica name is in RANK; a counter file per
    replica in ZHINAO_WORKDIR tells the runs of a restarted container apart)."""
    template = {
        "spec": {
            "terminationGracePeriodSeconds": grace,
            "containers": [{"name": "pytorch", "command": [sys.executable, "-c", textwrap.dedent(script)], "env": []}],
            **pod,
        }
    }
    specs = {"Master": {"replicas": 1, "restartPolicy": policy, "template": template}}
    if replicas > 1:
        specs["Worker"] = {"replicas": replicas - 1, "restartPolicy": policy, "template": template}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "t"},
        "spec": {"runPolicy": {"backoffLimit": backoff_limit}, "pytorchReplicaSpecs": specs},
    }


# Fails (exit code given) on the first `fails` runs of the worker's container, then succeeds.
FLAKY_WORKER = """
import os, sys
from pathlib import Path
runs = Path(os.environ["ZHINAO_WORKDIR"]) / "runs"
n = int(runs.read_text()) if runs.exists() else 0
runs.write_text(str(n + 1))
if os.environ["RANK"] != "0" and n < {fails}:
    raise SystemExit({code})
"""


def run(j: dict, tmp_path: Path, **kw):
    return LocalJobRunner(j, workdir=tmp_path, crash_backoff=FAST_BACKOFF, **kw).run()


def test_on_failure_restarts_the_container_in_place_and_counts_restarts_against_backoff_limit(tmp_path):
    result = run(job(FLAKY_WORKER.format(fails=2, code=1), backoff_limit=3), tmp_path)
    assert result.succeeded and result.restarts == 2
    assert [f.replica for f in result.failures] == ["worker-0", "worker-0"]
    # In place: the pod's scratch volume (with the run counter) survived the restarts.
    assert (tmp_path / "scratch" / "t" / "worker-0" / "runs").read_text() == "3"


def test_backoff_limit_is_a_sum_of_container_restarts_not_of_job_restarts(tmp_path):
    # Every replica of a 3-pod job fails once, as when one lost node takes its peers down with it:
    # 3 restarts, so backoffLimit 3 is spent in one incident.
    script = FLAKY_WORKER.format(fails=1, code=1).replace('os.environ["RANK"] != "0" and ', "")
    result = run(job(script, replicas=3, backoff_limit=3), tmp_path)
    assert not result.succeeded and result.restarts == 3
    assert "backoffLimit 3 reached (3 container restarts)" in result.reason
    assert run(job(script, replicas=3, backoff_limit=4), tmp_path / "more").succeeded


def test_backoff_limit_zero_fails_at_the_first_failure(tmp_path):
    result = run(job(FLAKY_WORKER.format(fails=1, code=1), backoff_limit=0), tmp_path)
    assert not result.succeeded and result.restarts == 1 and len(result.failures) == 1


def test_exit_code_policy_recreates_pods_on_retryable_codes_without_counting_them(tmp_path):
    # The worker's whole container is SIGKILLed twice (137, as an OOM kill): retried past backoffLimit 0,
    # each time in a new pod -- a fresh scratch volume, so the marker written there is gone.
    script = f"""
    import os
    from pathlib import Path
    kills, marker = Path({str(tmp_path / "kills")!r}), Path(os.environ["ZHINAO_WORKDIR"]) / "marker"
    assert not marker.exists(), "the scratch volume of a recreated pod is empty"
    marker.touch()
    n = int(kills.read_text()) if kills.exists() else 0
    if os.environ["RANK"] != "0" and n < 2:
        kills.write_text(str(n + 1))
        os.kill(os.getpid(), 9)
    """
    result = run(job(script, policy="ExitCode", backoff_limit=0), tmp_path)
    assert result.succeeded and result.restarts == 2, result.reason
    assert [(f.replica, f.exit_code) for f in result.failures] == [("worker-0", 137)] * 2


def test_exit_code_policy_fails_at_once_on_a_permanent_code(tmp_path):
    result = run(job(FLAKY_WORKER.format(fails=5, code=1), policy="ExitCode", backoff_limit=10), tmp_path)
    assert not result.succeeded and result.restarts == 0
    assert "exit code 1 is permanent under restartPolicy ExitCode" in result.reason


def test_the_failure_names_the_replica_and_its_last_error_line(tmp_path):
    script = """
    import os, sys
    if os.environ["RANK"] == "1":
        print("loading shards", flush=True)
        raise ValueError("corpus shard 7 is not gzip")
    """
    result = run(job(script, backoff_limit=0), tmp_path)
    assert "worker-0 exited with code 1: ValueError: corpus shard 7 is not gzip" in result.reason
    assert str(tmp_path / "logs" / "t" / "worker-0.log") in result.reason


def test_the_termination_message_wins_over_the_log(tmp_path):
    script = """
    import os
    if os.environ["RANK"] == "1":
        open(os.environ["ZHINAO_TERMINATION_LOG"], "a").write("rank 1: OSError: disk full\\n")
        print("ChildFailedError: noise from the launcher")
        raise SystemExit(1)
    """
    result = run(job(script, backoff_limit=0), tmp_path)
    assert result.failures[0].message == "rank 1: OSError: disk full"


def test_last_error_line_reads_only_the_tail(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("Error: old\n" + "x" * 10000 + "\nTraceback (most recent call last):\nKeyError: 'tokens'\ndone\n")
    assert last_error_line(log) == "KeyError: 'tokens'"


def test_configmap_volumes_become_files_and_init_containers_run_first(tmp_path):
    check = """
    import os, json
    spec = json.load(open(os.environ["SPEC"]))
    assert spec["big"] == "x" * 300_000, "the stage spec file is whole"
    assert open(os.environ["ZHINAO_WORKDIR"] + "/init-ran").read() == "yes"
    """
    init = {
        "name": "init",
        "command": [sys.executable, "-c", "import os; open(os.environ['OUT'], 'w').write('yes')"],
        "env": [{"name": "OUT", "value": str(tmp_path / "scratch" / "t" / "master-0" / "init-ran")}],
    }
    j = job(check, replicas=1, volumes=[{"name": "spec", "configMap": {"name": "t-spec"}}])
    pod = j["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    pod["containers"][0]["env"] = [{"name": "SPEC", "value": "/etc/zhinao/stage.json"}]
    pod["containers"][0]["volumeMounts"] = [{"name": "spec", "mountPath": "/etc/zhinao"}]
    pod["initContainers"] = [init]
    configmaps = {"t-spec": {"stage.json": '{"big": "' + "x" * 300_000 + '"}'}}
    result = run(j, tmp_path, configmaps=configmaps)
    assert result.succeeded, (tmp_path / "logs" / "t" / "master-0.log").read_text()


def test_a_missing_configmap_is_named(tmp_path):
    j = job("pass", replicas=1, volumes=[{"name": "spec", "configMap": {"name": "nope"}}])
    j["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "spec", "mountPath": "/etc/zhinao"}
    ]
    with pytest.raises(FileNotFoundError, match="ConfigMap 'nope'"):
        run(j, tmp_path)


# Every replica starts a child and a grandchild that ignore SIGTERM, then sleeps: only SIGKILL ends them.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
inner = "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \\
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)']); time.sleep(600)"
subprocess.Popen([sys.executable, "-c", inner])
time.sleep(600)
"""


def descendants_when_started(expected: int, before: set[int], timeout: float = 60) -> list[psutil.Process]:
    """The `expected` processes the run started: this process's descendants not in `before` (the
    suite's own servers and finished children are there too)."""
    me = psutil.Process()
    deadline = time.time() + timeout
    while time.time() < deadline:
        procs = [p for p in me.children(recursive=True) if p.pid not in before]
        if len(procs) >= expected:
            return procs
        time.sleep(0.1)
    raise AssertionError(f"only {len(procs)} of {expected} processes started")


def current_descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def assert_none_survive(procs: list[psutil.Process]) -> None:
    alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [(p.pid, p.cmdline()) for p in alive]


def test_ctrl_c_stops_every_replica_like_kubelet_sigterm_grace_then_sigkill(tmp_path):
    procs: list[psutil.Process] = []
    before = current_descendants()

    def interrupt_once_running():
        procs.extend(descendants_when_started(2 * 3, before))  # 2 replicas x (replica, child, grandchild)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: KeyboardInterrupt in the main thread

    threading.Thread(target=interrupt_once_running, daemon=True).start()
    began = time.time()
    with pytest.raises(KeyboardInterrupt):
        run(job(STUBBORN, grace=2), tmp_path)
    stopped = time.time()
    assert len(procs) == 6
    assert_none_survive(procs)
    # They ignored SIGTERM, so the grace period passed before the SIGKILL.
    assert stopped - began >= 2


def test_a_failed_job_stops_the_replicas_still_running(tmp_path):
    script = STUBBORN.replace(
        "time.sleep(600)\n", "time.sleep(600 if __import__('os').environ['RANK'] == '0' else 2); raise SystemExit(3)\n"
    )
    procs: list[psutil.Process] = []
    before = current_descendants()
    threading.Thread(target=lambda: procs.extend(descendants_when_started(6, before)), daemon=True).start()
    result = run(job(script, backoff_limit=0, grace=1), tmp_path)
    assert not result.succeeded and "worker-0 exited with code 3" in result.reason
    assert len(procs) == 6
    assert_none_survive(procs)
