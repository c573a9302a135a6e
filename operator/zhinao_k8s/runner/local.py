"""Execute one rendered PyTorchJob as local processes, as the training operator and kubelet would.

This is the embedded default when there is no cluster. The job dict (and the ConfigMaps it mounts)
is exactly what the cluster would receive; only what a cluster provides and a laptop does not is
emulated here: pod DNS (MASTER_ADDR is 127.0.0.1), distinct ports per pod (free ports are picked),
each pod's emptyDir scratch (a directory per replica, emptied when the pod is created and kept
across container restarts), ConfigMap volumes (files; paths under the mount point are rewritten),
init containers (run in order before the main one), and the failure semantics of Kubeflow v1.9:

- `OnFailure`: a failed container is restarted in place (kubelet's crash-loop delay: at once, then
  10 s doubling to 300 s); the job is Failed once the restarts summed over all pods reach
  `backoffLimit` (at the first failure when it is 0).
- `ExitCode`: a pod whose exit code is retryable (130, 137, 143, 138) is recreated, not counted
  against `backoffLimit`; any other code fails the job.
- `Never`: any failure fails the job.

Every replica is one process group, stopped the way kubelet stops a pod -- SIGTERM to the group,
`terminationGracePeriodSeconds` (default 30), then SIGKILL -- on every way out of `run()`: success,
failure, an exception, Ctrl-C or SIGTERM.
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

import psutil

from zhinao.config.runtime import ENV_TERMINATION_LOG
from zhinao_k8s.runner.env import Replica, command_line, container_env, error_line, operator_env, replicas

POLL_SECONDS = 0.2
DEFAULT_GRACE_SECONDS = 30
"""Kubernetes' default terminationGracePeriodSeconds."""
CRASH_BACKOFF_SECONDS = (10.0, 300.0)
"""kubelet's delay before the second restart of a container, doubled each time up to the cap."""
RETRYABLE_EXIT_CODES = frozenset({130, 137, 143, 138})
"""Kubeflow's retryable codes under restartPolicy ExitCode: SIGINT, SIGKILL, SIGTERM, and SIGUSR1
(a user-defined retry); every other code is permanent (pkg/util/train IsRetryableExitCode)."""
LOG_TAIL_BYTES = 4096
KILL_WAIT_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Failure:
    replica: str
    exit_code: int
    """As Kubernetes reports it: 128 + n for a process killed by signal n."""
    message: str
    """The replica's last error line: its termination message, else its log's last error line."""
    log: Path
    at: float

    def describe(self) -> str:
        return f"{self.replica} exited with code {self.exit_code}: {self.message} (log: {self.log})"


@dataclass
class JobResult:
    name: str
    succeeded: bool = False
    failures: list[Failure] = field(default_factory=list)
    restarts: int = 0
    """Container restarts (OnFailure) plus pod recreations (ExitCode), summed over all pods."""
    reason: str = ""
    log_dir: Path | None = None
    started: float = 0.0
    ended: float = 0.0

    @property
    def seconds(self) -> float:
        return self.ended - self.started if self.ended else 0.0


Listener = Callable[[str, dict], None]


class JobFailed(Exception):
    """The job cannot go on (backoffLimit reached, a permanent exit code)."""


@dataclass
class Pod:
    """One replica: its containers in run order (init containers, then the main one)."""

    replica: Replica
    containers: list[tuple[str, list[str], dict[str, str]]]
    """(name, argv, env) of each container."""
    scratch: Path
    termination_log: Path
    log_path: Path
    metrics_port: int | None
    grace_seconds: float
    step: int = 0
    """Index of the running container in `containers`."""
    process: subprocess.Popen | None = None
    restarts: int = 0
    start_at: float = 0.0
    """When a (re)start is due; the process is None until then."""
    done: bool = False

    @property
    def name(self) -> str:
        return self.replica.name


class LocalJobRunner:
    """Runs `job` until it succeeds or fails under its restart policy and backoffLimit."""

    def __init__(
        self,
        job: dict,
        *,
        workdir: Path,
        configmaps: dict[str, dict[str, str]] | None = None,
        secrets: dict[str, dict[str, str]] | None = None,
        environ: dict[str, str] | None = None,
        listener: Listener | None = None,
        echo_logs: bool = False,
        crash_backoff: tuple[float, float] = CRASH_BACKOFF_SECONDS,
    ):
        self.job = job
        self.name = job["metadata"]["name"]
        self.workdir = Path(workdir)
        self.configmaps = configmaps or {}
        self.secrets = secrets or {}
        self.environ = dict(os.environ if environ is None else environ)
        self.listener = listener or (lambda event, data: None)
        self.echo_logs = echo_logs
        self.crash_backoff = crash_backoff
        self.pods: list[Pod] = []
        self.writer = f"zhinao-k8s run (pid {os.getpid()} on {socket.gethostname()}) job {self.name}"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs" / self.name

    def scratch_dir(self, replica: Replica) -> Path:
        return self.workdir / "scratch" / self.name / replica.name

    def _pod_dir(self, replica: Replica) -> Path:
        return self.workdir / "pods" / self.name / replica.name

    # -- the job ---------------------------------------------------------------------------------

    def run(self) -> JobResult:
        result = JobResult(self.name, log_dir=self.log_dir, started=time.time())
        try:
            self.pods = self._create_pods()
            for pod in self.pods:
                self._create(pod)
            self._supervise(result)
            result.succeeded = True
            self.listener("succeeded", {"job": self.name})
        except JobFailed as exc:
            result.reason = str(exc)
            self.listener("failed", {"job": self.name, "reason": result.reason})
        finally:
            self.stop()  # every way out: success, failure, an exception, Ctrl-C or SIGTERM
            result.ended = time.time()
        return result

    def _supervise(self, result: JobResult) -> None:
        spec = self.job["spec"]
        backoff_limit = spec.get("runPolicy", {}).get("backoffLimit")
        while not all(pod.done for pod in self.pods):
            for pod in self.pods:
                if pod.done:
                    continue
                if pod.process is None:
                    if time.time() >= pod.start_at:
                        self._launch(pod)
                    continue
                code = pod.process.poll()
                if code is None:
                    continue
                if code == 0:
                    if pod.step + 1 < len(pod.containers):
                        pod.step += 1
                        self._launch(pod)
                    else:
                        pod.done = True
                    continue
                failure = Failure(pod.name, _k8s_exit_code(code), self._last_error(pod), pod.log_path, time.time())
                result.failures.append(failure)
                self._after_failure(pod, failure, result, backoff_limit)
            time.sleep(POLL_SECONDS)

    def _after_failure(self, pod: Pod, failure: Failure, result: JobResult, backoff_limit: int | None) -> None:
        policy = self.job["spec"]["pytorchReplicaSpecs"][pod.replica.type].get("restartPolicy", "Never")
        why = failure.describe()
        if policy == "ExitCode":
            if failure.exit_code not in RETRYABLE_EXIT_CODES:
                raise JobFailed(f"{why}; exit code {failure.exit_code} is permanent under restartPolicy ExitCode")
            self._stop_pods([pod])
            result.restarts += 1
            self._create(pod)  # a new pod: fresh scratch, init containers again
        elif policy in ("OnFailure", "Always"):
            self._stop_pods([pod])  # the rest of its process group goes with the container
            result.restarts += 1
            if backoff_limit is not None and result.restarts >= max(backoff_limit, 1):
                raise JobFailed(f"{why}; backoffLimit {backoff_limit} reached ({result.restarts} container restarts)")
            pod.restarts += 1
            pod.process = None
            pod.start_at = time.time() + self._crash_delay(pod.restarts)
        else:
            raise JobFailed(f"{why}; restartPolicy {policy}")
        self.listener("restarting", {"job": self.name, "replica": pod.name, "reason": why, "restarts": result.restarts})

    def _crash_delay(self, restart: int) -> float:
        base, cap = self.crash_backoff
        return 0.0 if restart <= 1 else min(cap, base * 2 ** (restart - 2))

    # -- pods ------------------------------------------------------------------------------------

    def _create_pods(self) -> list[Pod]:
        master_port = free_port()  # the master's Service port: stable for the job's lifetime
        self.log_dir.mkdir(parents=True, exist_ok=True)
        pods = []
        for replica in replicas(self.job):
            spec = self.job["spec"]["pytorchReplicaSpecs"][replica.type]["template"]["spec"]
            scratch = self.scratch_dir(replica)
            termination_log = self._pod_dir(replica) / "termination-log"
            paths = self._mount_config_maps(spec, replica)
            main = spec["containers"][0]
            env = container_env(main, self.secrets, self.environ)
            env.update(operator_env(self.job, replica, master_addr="127.0.0.1", master_port=master_port))
            env["ZHINAO_WORKDIR"] = str(scratch)
            # Who writes the output (zhinao.lease): this run, whichever of its containers restarts.
            env["ZHINAO_WRITER"] = self.writer
            # A pod's CPU limit keeps its threads to itself; here the replicas share one machine.
            env.setdefault("OMP_NUM_THREADS", str(self.threads_per_process()))
            metrics_port = None
            if "ZHINAO_METRICS_PORT" in env:
                metrics_port = free_port()
                env["ZHINAO_METRICS_PORT"] = str(metrics_port)
                env.setdefault("ZHINAO_METRICS_ADDR", "127.0.0.1")
            containers = [
                self._container(c, container_env(c, self.secrets, self.environ), paths, termination_log)
                for c in spec.get("initContainers", [])
            ] + [self._container(main, env, paths, termination_log)]
            pods.append(
                Pod(
                    replica,
                    containers,
                    scratch,
                    termination_log,
                    self.log_dir / f"{replica.name}.log",
                    metrics_port,
                    float(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)),
                )
            )
        return pods

    def _container(
        self, container: dict, env: dict[str, str], paths: dict[str, str], termination_log: Path
    ) -> tuple[str, list[str], dict[str, str]]:
        env = {k: _rewrite(v, paths) for k, v in env.items()}
        env[ENV_TERMINATION_LOG] = str(termination_log)
        # A pod's HOME is its own; keep the user's locally so library caches are reused.
        env["HOME"] = self.environ.get("HOME", env.get("HOME", "/tmp"))
        argv = [_rewrite(part, paths) for part in command_line(container, env)]
        argv[0] = _resolve_executable(argv[0])
        return container["name"], argv, env

    def _mount_config_maps(self, spec: dict, replica: Replica) -> dict[str, str]:
        """Write each ConfigMap volume's files; return {mountPath: local directory}."""
        volumes = {v["name"]: v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v}
        paths = {}
        for container in spec.get("initContainers", []) + spec["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    continue
                configmap = volumes[mount["name"]]
                if configmap not in self.configmaps:
                    raise FileNotFoundError(f"ConfigMap {configmap!r} (volume {mount['name']}) was not rendered")
                local = self._pod_dir(replica) / "volumes" / mount["name"]
                local.mkdir(parents=True, exist_ok=True)
                for key, text in self.configmaps[configmap].items():
                    (local / key).write_text(text)
                paths[mount["mountPath"]] = str(local)
        return paths

    def _create(self, pod: Pod) -> None:
        """A new pod: an empty scratch volume, its init containers first."""
        shutil.rmtree(pod.scratch, ignore_errors=True)
        pod.scratch.mkdir(parents=True, exist_ok=True)
        pod.step, pod.process, pod.start_at = 0, None, time.time()

    def _launch(self, pod: Pod) -> None:
        name, argv, env = pod.containers[pod.step]
        pod.termination_log.unlink(missing_ok=True)  # one message per container run, as kubelet keeps it
        pod.termination_log.parent.mkdir(parents=True, exist_ok=True)
        with open(pod.log_path, "ab") as log:
            log.write(f"\n===== {name} (restart {pod.restarts}): {' '.join(argv)}\n".encode())
        with open(pod.log_path, "ab") as log:
            pod.process = subprocess.Popen(
                argv,
                env={**self._base_env(), **env},
                stdout=subprocess.PIPE if self.echo_logs else log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # one process group per "pod", stopped as a unit
            )
        if self.echo_logs:
            threading.Thread(target=self._pump, args=(pod, pod.process), daemon=True).start()
        self.listener(
            "started",
            {
                "job": self.name,
                "replica": pod.name,
                "container": name,
                "pid": pod.process.pid,
                "restarts": pod.restarts,
                "metrics_port": pod.metrics_port,
                "log": str(pod.log_path),
            },
        )

    def threads_per_process(self) -> int:
        processes = len(replicas(self.job)) * int(self.job["spec"].get("nprocPerNode", "1"))
        return int(self.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // processes))

    def _base_env(self) -> dict[str, str]:
        """The user's environment minus anything that would make the replica think it is in a job already."""
        drop = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "LOCAL_WORLD_SIZE"}
        return {k: v for k, v in self.environ.items() if k not in drop and not k.startswith("PET_")}

    def _pump(self, pod: Pod, process: subprocess.Popen) -> None:
        with open(pod.log_path, "ab") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                sys.stderr.write(f"[{self.name}/{pod.name}] {line.decode(errors='replace')}")

    def _last_error(self, pod: Pod) -> str:
        """The container's termination message (first line: the root cause), else -- as kubelet's
        FallbackToLogsOnError -- from its log's tail: the last line naming an error, or the last line."""
        with contextlib.suppress(OSError):
            first = pod.termination_log.read_text(errors="replace").strip().splitlines()
            if first:
                return first[0]
        return last_error_line(pod.log_path)

    # -- stopping --------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop_pods(self.pods)

    def _stop_pods(self, pods: list[Pod]) -> None:
        """kubelet's pod stop: SIGTERM to every group, the grace period, then SIGKILL to what is left.
        An interrupt while waiting (a second Ctrl-C) skips the rest of the grace period."""
        groups = [(pod, pod.process) for pod in pods if pod.process is not None]
        for _pod, process in groups:
            _signal_group(process, signal.SIGTERM)
        deadline = time.time() + max((pod.grace_seconds for pod, _ in groups), default=0.0)
        try:
            while time.time() < deadline and any(_group_alive(p) for _, p in groups):
                time.sleep(0.05)
        finally:
            for _pod, process in groups:
                _signal_group(process, signal.SIGKILL)  # children of torchrun may outlive it
            # A SIGKILLed process is gone only once the kernel has run it down: wait for that.
            deadline = time.time() + KILL_WAIT_SECONDS
            while time.time() < deadline and any(_group_alive(p) for _, p in groups):
                time.sleep(0.05)
            for pod, process in groups:
                process.wait()
                pod.process = None


def _k8s_exit_code(returncode: int) -> int:
    """Popen gives -n for a process killed by signal n; a container's status says 128 + n."""
    return 128 - returncode if returncode < 0 else returncode


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group has already exited
        os.killpg(process.pid, sig)


def _group_alive(process: subprocess.Popen) -> bool:
    """Whether any process of the group still runs (zombies waiting for their parent do not count)."""
    process.poll()  # reap the leader
    try:
        os.killpg(process.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == process.pid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


def last_error_line(log_path: Path) -> str:
    """The error line of the log's tail (kubelet's FallbackToLogsOnError reads a tail, too)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            tail = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return error_line(tail) or "(empty log)"


def _rewrite(value: str, paths: dict[str, str]) -> str:
    """A path under a mounted volume's mountPath, moved to where the volume is locally."""
    for mount, local in paths.items():
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return local + value[len(mount.rstrip("/")) :]
    return value


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
