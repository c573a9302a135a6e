"""Execute one rendered PyTorchJob as local processes: one per replica, restarted as a whole.

This is the embedded default when there is no cluster. The job dict is exactly what the cluster
would receive; only what a cluster provides and a laptop does not is emulated here:
pod DNS (MASTER_ADDR is 127.0.0.1), distinct ports per pod (free ports are picked), and each
pod's emptyDir scratch volume (a directory per replica).
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zhinao_k8s.runner.env import Replica, command_line, container_env, operator_env, replicas

POLL_SECONDS = 0.2
KILL_GRACE_SECONDS = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Attempt:
    number: int
    started: float
    ended: float = 0.0
    failed_replica: str | None = None
    exit_code: int | None = None


@dataclass
class JobResult:
    name: str
    succeeded: bool
    attempts: list[Attempt] = field(default_factory=list)
    reason: str = ""
    log_dir: Path | None = None

    @property
    def restarts(self) -> int:
        return len(self.attempts) - 1

    @property
    def seconds(self) -> float:
        return self.attempts[-1].ended - self.attempts[0].started if self.attempts else 0.0


@dataclass
class RunningReplica:
    replica: Replica
    process: subprocess.Popen
    metrics_port: int | None
    log_path: Path


Listener = Callable[[str, dict], None]


class LocalJobRunner:
    """Runs `job` until it succeeds or has failed `backoffLimit + 1` times."""

    def __init__(
        self,
        job: dict,
        *,
        workdir: Path,
        secrets: dict[str, dict[str, str]] | None = None,
        environ: dict[str, str] | None = None,
        listener: Listener | None = None,
        echo_logs: bool = False,
    ):
        self.job = job
        self.name = job["metadata"]["name"]
        self.workdir = Path(workdir)
        self.secrets = secrets or {}
        self.environ = dict(os.environ if environ is None else environ)
        self.listener = listener or (lambda event, data: None)
        self.echo_logs = echo_logs
        self.running: list[RunningReplica] = []

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs" / self.name

    def scratch_dir(self, replica: Replica) -> Path:
        return self.workdir / "scratch" / self.name / replica.name

    def run(self) -> JobResult:
        backoff_limit = self.job["spec"].get("runPolicy", {}).get("backoffLimit", 0)
        result = JobResult(self.name, succeeded=False, log_dir=self.log_dir)
        while True:
            attempt = Attempt(number=len(result.attempts) + 1, started=time.time())
            result.attempts.append(attempt)
            self._start_all(attempt.number)
            failed = self._wait()
            attempt.ended = time.time()
            if failed is None:
                result.succeeded = True
                self.listener("succeeded", {"job": self.name, "attempt": attempt.number})
                return result
            attempt.failed_replica, attempt.exit_code = failed.replica.name, failed.process.returncode
            self._stop_all()
            why = f"{failed.replica.name} exited with code {failed.process.returncode} (log: {failed.log_path})"
            if len(result.attempts) > backoff_limit:
                result.reason = f"{why}; backoffLimit {backoff_limit} reached"
                self.listener("failed", {"job": self.name, "reason": result.reason})
                return result
            self.listener("restarting", {"job": self.name, "reason": why, "attempt": attempt.number})

    def _start_all(self, attempt: int) -> None:
        master_port = free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.running = []
        for replica in replicas(self.job):
            spec = self.job["spec"]["pytorchReplicaSpecs"][replica.type]["template"]["spec"]
            container = spec["containers"][0]
            env = container_env(container, self.secrets, self.environ)
            env.update(operator_env(self.job, replica, master_addr="127.0.0.1", master_port=master_port))
            scratch = self.scratch_dir(replica)
            scratch.mkdir(parents=True, exist_ok=True)
            env["ZHINAO_WORKDIR"] = str(scratch)
            # A pod's CPU limit keeps its threads to itself; here the replicas share one machine.
            env.setdefault("OMP_NUM_THREADS", str(self.threads_per_process()))
            # A pod's HOME is its own; keep the user's locally so library caches are reused.
            env["HOME"] = self.environ.get("HOME", str(scratch))
            metrics_port = None
            if "ZHINAO_METRICS_PORT" in env:
                metrics_port = free_port()
                env["ZHINAO_METRICS_PORT"] = str(metrics_port)
                env.setdefault("ZHINAO_METRICS_ADDR", "127.0.0.1")
            argv = command_line(container, env)
            argv[0] = _resolve_executable(argv[0])
            log_path = self.log_dir / f"{replica.name}.log"
            with open(log_path, "ab") as log:
                log.write(f"\n===== attempt {attempt}: {' '.join(argv)}\n".encode())
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    argv,
                    env={**self._base_env(), **env},
                    stdout=subprocess.PIPE if self.echo_logs else log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # one process group per "pod", killed as a unit
                )
            self.running.append(RunningReplica(replica, process, metrics_port, log_path))
            self.listener(
                "started",
                {
                    "job": self.name,
                    "replica": replica.name,
                    "pid": process.pid,
                    "attempt": attempt,
                    "metrics_port": metrics_port,
                    "log": str(log_path),
                },
            )
        if self.echo_logs:
            self._start_echo_threads()

    def threads_per_process(self) -> int:
        processes = len(replicas(self.job)) * int(self.job["spec"].get("nprocPerNode", "1"))
        return int(self.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // processes))

    def _base_env(self) -> dict[str, str]:
        """The user's environment minus anything that would make the replica think it is in a job already."""
        drop = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "LOCAL_WORLD_SIZE"}
        return {k: v for k, v in self.environ.items() if k not in drop and not k.startswith("PET_")}

    def _start_echo_threads(self) -> None:
        def pump(r: RunningReplica) -> None:
            with open(r.log_path, "ab") as log:
                for line in r.process.stdout:
                    log.write(line)
                    log.flush()
                    sys.stderr.write(f"[{self.name}/{r.replica.name}] {line.decode(errors='replace')}")

        for r in self.running:
            threading.Thread(target=pump, args=(r,), daemon=True).start()

    def _wait(self) -> RunningReplica | None:
        """None when every replica exited 0; else the first replica that failed."""
        while True:
            done = True
            for r in self.running:
                code = r.process.poll()
                if code is None:
                    done = False
                elif code != 0:
                    return r
            if done:
                return None
            time.sleep(POLL_SECONDS)

    def _stop_all(self) -> None:
        for r in self.running:
            _signal_group(r.process, signal.SIGTERM)
        deadline = time.time() + KILL_GRACE_SECONDS
        for r in self.running:
            try:
                r.process.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _signal_group(r.process, signal.SIGKILL)
                r.process.wait()
        # Children of torchrun may outlive it; the group kill reaches them too.
        for r in self.running:
            _signal_group(r.process, signal.SIGKILL)

    def stop(self) -> None:
        self._stop_all()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group has already exited
        os.killpg(process.pid, sig)


def _resolve_executable(name: str) -> str:
    """Prefer the executable next to this interpreter (the venv), as the image's PATH would."""
    if os.sep in name:
        return name
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(
            f"{name!r} is not installed (the trainer image provides it; locally install the [train] extra)"
        )
    return found
