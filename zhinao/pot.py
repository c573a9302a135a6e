"""Program-of-thought (PoT) spans and a sandboxed executor to check them (report section 3.1.1).

For math and reasoning the 360Zhinao model writes Python wrapped in markers, which an interpreter
executes at serving time; the released serving code uses `<<var = expr>>` and `<<expr>>`. Here:

- `wrap(code)` / `find_spans(text)` write and find those spans;
- `execute(spans)` runs them, in order and in one namespace, in a *separate* Python process;
- `substitute(text)` replaces each span by its value (for evaluation of PoT answers).

What the sandbox guarantees, honestly:
- a fresh interpreter (`python -I -S`: no user site, no PYTHON* variables, no site-packages) with
  an empty environment and a private temporary working directory that is deleted afterwards;
- a wall-clock timeout (the process group is killed) and rlimits on CPU seconds, address space,
  file size, open files and processes (so fork bombs and memory bombs fail);
- no network: when `unshare -rn` works on the host the process runs in a new, empty network
  namespace (kernel-enforced); otherwise, `socket` is replaced before the user's code runs,
  which stops ordinary code but NOT a determined attacker (ctypes can reach libc).
It is not a security boundary against hostile code; run untrusted code in a locked-down
container (gVisor, seccomp, no egress NetworkPolicy) as well.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache

OPEN, CLOSE = "<<", ">>"
_SPAN = re.compile(re.escape(OPEN) + r"(.+?)" + re.escape(CLOSE), re.S)

# Runs inside the sandbox: disable sockets, then evaluate the spans one by one.
_RUNNER = r"""
import json, sys
def _blocked(*a, **k):
    raise OSError("network access is disabled in the PoT sandbox")
import socket as _s
for _name in ("socket", "create_connection", "create_server", "socketpair", "getaddrinfo", "fromfd"):
    setattr(_s, _name, _blocked)
spans = json.loads(sys.stdin.read())
ns, out = {}, []
for code in spans:
    try:
        try:
            value = eval(compile(code, "<pot>", "eval"), ns)
        except SyntaxError:
            exec(compile(code, "<pot>", "exec"), ns)
            target = code.split("=", 1)[0].strip() if "=" in code.split("\n", 1)[0] else None
            value = ns.get(target.split(",")[0].strip()) if target and target.split(",")[0].strip().isidentifier() else None
        out.append({"ok": True, "value": repr(value) if not isinstance(value, (int, float, str)) else value})
    except BaseException as e:
        out.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
sys.stdout.write(json.dumps(out))
"""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 512
    file_mb: int = 1
    open_files: int = 32
    processes: int = 0
    """Extra processes the code may start (0: none; enforced where RLIMIT_NPROC is per user and
    the user has no other processes, so it is a soft guarantee)."""


@dataclass(frozen=True)
class SpanResult:
    code: str
    ok: bool
    value: object = None
    error: str | None = None


def wrap(code: str) -> str:
    return f"{OPEN}{code}{CLOSE}"


def find_spans(text: str) -> list[str]:
    return [m.group(1) for m in _SPAN.finditer(text)]


@lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """Whether `unshare -rn` (an unprivileged user + network namespace) works on this host."""
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _limit(limits: Limits):
    def apply() -> None:
        import resource

        os.setsid()
        mb = 1 << 20
        for res, value in (
            (resource.RLIMIT_CPU, limits.cpu_s),
            (resource.RLIMIT_AS, limits.memory_mb * mb),
            (resource.RLIMIT_FSIZE, limits.file_mb * mb),
            (resource.RLIMIT_NOFILE, limits.open_files),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(res, (value, value))
        try:
            nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
            if limits.processes == 0 or nproc == resource.RLIM_INFINITY or nproc > limits.processes:
                resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes + 1, limits.processes + 1))
        except (ValueError, OSError):
            pass

    return apply


def execute(spans: list[str], limits: Limits = Limits()) -> list[SpanResult]:
    """Run the spans in order in one sandboxed interpreter; a failed span does not stop the rest.

    A timeout or crash of the whole process marks every span without a result as failed.
    """
    if not spans:
        return []
    cmd = [sys.executable, "-I", "-S", "-c", _RUNNER]
    if network_namespace_available():
        cmd = ["unshare", "-rn", *cmd]
    with tempfile.TemporaryDirectory(prefix="zhinao-pot-") as cwd:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env={"PATH": "/usr/bin:/bin", "HOME": cwd, "LANG": "C.UTF-8"},
            preexec_fn=_limit(limits),
            text=True,
        )
        try:
            stdout, stderr = proc.communicate(json.dumps(spans), timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return [SpanResult(code, False, error=f"timeout after {limits.timeout_s}s") for code in spans]
    try:
        results = json.loads(stdout)
    except ValueError:
        why = (stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return [SpanResult(code, False, error=f"sandbox failed: {why}") for code in spans]
    return [SpanResult(code, r["ok"], r.get("value"), r.get("error")) for code, r in zip(spans, results)]


def substitute(text: str, limits: Limits = Limits()) -> str:
    """Each `<<...>>` span replaced by its value (or `<<error: ...>>` when it failed)."""
    results = iter(execute(find_spans(text), limits))

    def replace(_m: re.Match) -> str:
        r = next(results)
        return str(r.value) if r.ok else f"{OPEN}error: {r.error}{CLOSE}"

    return _SPAN.sub(replace, text)
