"""Pure: the environment and command line the training operator gives each replica's container,
and the error line of a failed one."""

import re
from dataclasses import dataclass

_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\$")
_RANK_LINE = re.compile(r"^rank \d+: ")


@dataclass(frozen=True)
class Replica:
    type: str
    """`Master` or `Worker`."""
    index: int
    """Index within its type; the node rank is index for Master, index + 1 for Workers."""
    node_rank: int

    @property
    def name(self) -> str:
        return f"{self.type.lower()}-{self.index}"


def replicas(job: dict) -> list[Replica]:
    specs = job["spec"]["pytorchReplicaSpecs"]
    out = [Replica("Master", i, i) for i in range(specs["Master"].get("replicas", 1))]
    workers = specs.get("Worker", {}).get("replicas", 0)
    out += [Replica("Worker", i, i + len(out)) for i in range(workers)]
    return out


def operator_env(job: dict, replica: Replica, *, master_addr: str, master_port: int) -> dict[str, str]:
    """What training-operator v1.9 appends to the container env (pkg/controller.v1/pytorch/envvar.go)."""
    nodes = len(replicas(job))
    nproc = int(job["spec"].get("nprocPerNode", "1"))
    return {
        "PYTHONUNBUFFERED": "1",
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(nodes * nproc),
        "RANK": str(replica.node_rank),
        "PET_NNODES": str(nodes),
        "PET_NODE_RANK": str(replica.node_rank),
        "PET_NPROC_PER_NODE": str(nproc),
    }


class UnresolvedEnv(ValueError):
    """An env var the local runner cannot resolve (an unsupported source or a missing Secret key)."""


def container_env(container: dict, secrets: dict[str, dict[str, str]], fallback: dict[str, str]) -> dict[str, str]:
    """Resolve `value` and `valueFrom.secretKeyRef` entries.

    A Secret is looked up in `secrets` (name -> data, e.g. parsed from a Secret manifest); when the
    user has not given it, the variable is taken from `fallback` (the caller's environment), so
    `AWS_ACCESS_KEY_ID=... zhinao-k8s run` works without writing a Secret file.
    """
    env: dict[str, str] = {}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = _expand(item["value"], env)
            continue
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            raise UnresolvedEnv(f"env {name}: only value and valueFrom.secretKeyRef are supported locally")
        data = secrets.get(ref["name"])
        if data is not None and ref["key"] in data:
            env[name] = data[ref["key"]]
        elif name in fallback:
            env[name] = fallback[name]
        elif not ref.get("optional", False):
            raise UnresolvedEnv(
                f"env {name}: Secret {ref['name']!r} key {ref['key']!r} not provided "
                f"(pass --secret FILE with the Secret manifest, or export {name})"
            )
    return env


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: defined variables are replaced, $$ escapes, unknown refs stay."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)


def command_line(container: dict, env: dict[str, str]) -> list[str]:
    return [_expand(part, env) for part in container.get("command", []) + container.get("args", [])]


def error_line(text: str) -> str | None:
    """The line of a failure message or log tail users need: a trainer's own `rank N: ...` line
    (the first one is the root cause), else the last line naming an error, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("=====")]
    ranks = [line for line in lines if _RANK_LINE.match(line)]
    errors = [line for line in lines if "Error" in line or "Exception" in line or "error:" in line]
    return (ranks[:1] or errors[-1:] or lines[-1:] or [None])[0]


def pod_error_lines(pods: list[dict]) -> list[str]:
    """`<pod>: <error line>` for each pod whose container last terminated with a failure, from the
    termination message Kubernetes keeps in the pod's status."""
    out = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (status.get("state"), status.get("lastState")):
                terminated = (state or {}).get("terminated") or {}
                line = error_line(terminated.get("message") or "") if terminated.get("exitCode") else None
                if line:
                    out.append(f"{pod['metadata']['name']}: {line}")
                    break
    return out
