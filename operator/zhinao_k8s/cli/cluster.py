"""Cluster commands: submit, status, list, logs, delete, and `operator run`.

Each command parses its options and hands off to `k8s.Cluster`; what a reply means (phases,
printer columns) comes from `api/status.py`. API-server errors become one line (`api_errors`).
"""

import contextlib
import functools
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from zhinao_k8s.api.load import load_pipeline
from zhinao_k8s.cli._options import (
    AllNamespacesOpt,
    ContextOpt,
    KubeconfigOpt,
    NamespaceOpt,
    OutputFormat,
    OutputOpt,
)
from zhinao_k8s.cli.errors import die, friendly

out = Console(highlight=False)

METRIC_LOSS = "zhinao_train_loss"
METRIC_TOKENS_PER_SECOND = "zhinao_tokens_per_second"
METRIC_STEP = "zhinao_step"


# -- errors -----------------------------------------------------------------------------------------


def format_api_error(exc: Exception) -> str:
    """`ApiException` -> `API server: 409 Conflict: trainingpipelines "demo" already exists`."""
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    message = None
    body = getattr(exc, "body", None)
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = str(body)[:200]
    return "API server: " + " ".join(str(p) for p in (status, reason) if p) + (f": {message}" if message else "")


def api_errors(fn):
    """Kubernetes failures as one line; anything else goes to `friendly` (ZHINAO_DEBUG=1: traceback)."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException
    from urllib3.exceptions import HTTPError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ApiException, ConfigException, HTTPError) as exc:
            if os.environ.get("ZHINAO_DEBUG") == "1":
                raise
            if isinstance(exc, ApiException):
                die(format_api_error(exc))
            if isinstance(exc, ConfigException):
                die(f"no cluster credentials: {exc} (use --kubeconfig, set KUBECONFIG, or run in a pod)")
            die(f"cannot reach the API server: {getattr(exc, 'reason', None) or exc}")

    return friendly(wrapper)


# -- helpers ----------------------------------------------------------------------------------------


def _connect(kubeconfig: Path | None, context: str | None):
    from zhinao_k8s.controller.k8s import Cluster, load_client

    return Cluster(load_client(str(kubeconfig) if kubeconfig else None, context))


def _namespace(namespace: str | None, kubeconfig: Path | None, context: str | None) -> str:
    from zhinao_k8s.controller.k8s import default_namespace

    return namespace or default_namespace(str(kubeconfig) if kubeconfig else None, context)


def placed_document(
    spec: Path,
    spec_namespace: str | None,
    namespace: str | None,
    kubeconfig: Path | None,
    context: str | None,
) -> tuple[dict, str]:
    """The spec file's document as written (defaults stay implicit, so `kubectl get -o yaml` shows the
    user's document) and its namespace: the option's, else the spec's, else the kubeconfig context's."""
    doc = yaml.safe_load(spec.read_text(encoding="utf-8"))
    ns = namespace or spec_namespace or _namespace(None, kubeconfig, context)
    doc.setdefault("metadata", {})["namespace"] = ns
    return doc, ns


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return ""
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return ""
    seconds = int((datetime.now(timezone.utc) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _dump(obj, fmt: OutputFormat) -> None:
    if fmt == OutputFormat.json:
        typer.echo(json.dumps(obj, indent=2, sort_keys=False))
    else:
        typer.echo(yaml.safe_dump(obj, sort_keys=False).rstrip())


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfINFaN]+)")


def parse_metrics(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """The first sample of each named metric in Prometheus text format (labels ignored)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) in names and m.group(1) not in found:
            try:
                found[m.group(1)] = float(m.group(3))
            except ValueError:
                continue
    return found


def live_metrics(cluster, namespace: str, pipeline: dict) -> dict[str, dict[str, float]]:
    """Latest loss, tokens/s and step of each running stage, from its rank-0 process's /metrics
    (through the API server's pod proxy). Stages that cannot be scraped are left out."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    port = ((pipeline.get("spec") or {}).get("metrics") or {}).get("port", 9400)
    live = {}
    for stage in (pipeline.get("status") or {}).get("stages", []):
        if stage.get("phase") not in ("Running", "Restarting") or not stage.get("jobName"):
            continue
        with contextlib.suppress(ApiException, HTTPError, ValueError):
            pods = cluster.job_pods(namespace, stage["jobName"])
            if pods:
                text = cluster.scrape(namespace, pods[0]["metadata"]["name"], port)
                values = parse_metrics(text, (METRIC_LOSS, METRIC_TOKENS_PER_SECOND, METRIC_STEP))
                if values:
                    live[stage["name"]] = values
    return live


def _fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "-"


# -- commands ---------------------------------------------------------------------------------------


def submit(
    spec: Annotated[Path, typer.Argument(help="TrainingPipeline YAML file.")],
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Validate a spec and create its TrainingPipeline in the cluster (the operator runs it)."""
    pipeline = load_pipeline(spec)
    doc, ns = placed_document(spec, pipeline.metadata.namespace, namespace, kubeconfig, context)
    _connect(kubeconfig, context).create_pipeline(ns, doc)
    name = pipeline.metadata.name
    out.print(f"trainingpipeline.zhinao.ai/{name} created in namespace {ns}")
    out.print(f"follow it with: zhinao-k8s status {name} -n {ns}", style="dim")


def status(
    name: Annotated[str, typer.Argument(help="TrainingPipeline name.")],
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Stages, phases, progress, and the latest loss and tokens/s of running stages."""
    cluster = _connect(kubeconfig, context)
    ns = _namespace(namespace, kubeconfig, context)
    body = cluster.get_pipeline(ns, name)
    if body is None:
        die(f"trainingpipeline {ns}/{name} not found")
    st = body.get("status") or {}
    live = live_metrics(cluster, ns, body)
    errors = replica_errors(cluster, ns, st)
    if output != OutputFormat.table:
        _dump({"name": name, "namespace": ns, **st, "live": live, "errors": errors}, output)
        return
    out.print(
        f"[bold]{name}[/] ({ns})  phase [bold]{st.get('phase', 'Pending')}[/]  "
        f"stage {st.get('currentStage') or '-'}  progress {st.get('progress') or '-'}"
    )
    if st.get("message"):
        out.print(f"  {st.get('reason', '')}: {st['message']}", markup=False)
    kinds = {s.get("name"): s.get("kind") for s in (body.get("spec") or {}).get("stages", [])}
    table = Table("STAGE", "KIND", "PHASE", "ATTEMPT", "JOB", "AGE", "STEP", "LOSS", "TOKENS/S (rank 0)", box=None)
    for s in st.get("stages", []):
        m = live.get(s["name"], {})
        table.add_row(
            s["name"],
            kinds.get(s["name"], ""),
            s.get("phase", ""),
            str(s.get("attempt") or "-"),
            s.get("jobName") or "-",
            _age(s.get("startTime")),
            _fmt(m.get(METRIC_STEP), ".0f"),
            _fmt(m.get(METRIC_LOSS), ".4f"),
            _fmt(m.get(METRIC_TOKENS_PER_SECOND), ",.0f"),
        )
    out.print(table)
    for stage, lines in errors.items():
        for line in lines:
            out.print(f"  [red]{stage}[/] {line}", highlight=False)


FAILING_PHASES = ("Restarting", "Retrying", "Failed")


def replica_errors(cluster, namespace: str, status: dict) -> dict[str, list[str]]:
    """Per failing stage, `<pod>: <error line>` of each replica whose container failed last time
    (the trainer's termination message, or the log tail Kubernetes kept in its place)."""
    from zhinao_k8s.runner.env import pod_error_lines

    errors = {}
    for s in status.get("stages", []):
        if s.get("phase") in FAILING_PHASES and s.get("jobName"):
            lines = pod_error_lines(cluster.job_pods(namespace, s["jobName"], role=None))
            if lines:
                errors[s["name"]] = lines
    return errors


def list_(
    namespace: NamespaceOpt = None,
    all_namespaces: AllNamespacesOpt = False,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """TrainingPipelines with their phase, current stage and progress."""
    from zhinao_k8s.api.status import printer_fields

    ns = None if all_namespaces else _namespace(namespace, kubeconfig, context)
    items = _connect(kubeconfig, context).list_pipelines(ns)
    if output != OutputFormat.table:
        _dump(
            [
                {
                    "name": i["metadata"]["name"],
                    "namespace": i["metadata"].get("namespace"),
                    **printer_fields(i.get("status")),
                }
                for i in items
            ],
            output,
        )
        return
    table = Table("NAMESPACE", "NAME", "PHASE", "STAGE", "PROGRESS", "AGE", box=None)
    for i in items:
        f = printer_fields(i.get("status"))
        table.add_row(
            i["metadata"].get("namespace", ""),
            i["metadata"]["name"],
            f["phase"],
            f["stage"],
            f["progress"],
            _age(i["metadata"].get("creationTimestamp")),
        )
    out.print(table)


def logs(
    name: Annotated[str, typer.Argument(help="TrainingPipeline name.")],
    stage: Annotated[str, typer.Option("--stage", "-s", help="Stage name.")],
    replica: Annotated[str, typer.Option(help="`master`, or `worker` for the first worker's logs.")] = "master",
    tail: Annotated[int | None, typer.Option(help="Only the last N lines.")] = None,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Logs of a stage's training pod (its PyTorchJob's master, by default)."""
    from zhinao_k8s.render.pytorchjob import CONTAINER_NAME

    cluster = _connect(kubeconfig, context)
    ns = _namespace(namespace, kubeconfig, context)
    body = cluster.get_pipeline(ns, name)
    if body is None:
        die(f"trainingpipeline {ns}/{name} not found")
    stages = {s.get("name"): s for s in (body.get("status") or {}).get("stages", [])}
    if stage not in {s.get("name") for s in (body.get("spec") or {}).get("stages", [])}:
        die(f"pipeline {name} has no stage {stage!r}")
    job = stages.get(stage, {}).get("jobName") or f"{name}-{stage}"
    pods = cluster.job_pods(ns, job, role=replica)
    if not pods:
        die(
            f"no {replica} pod for PyTorchJob {ns}/{job} yet (stage phase: {stages.get(stage, {}).get('phase', 'Pending')})"
        )
    typer.echo(cluster.pod_logs(ns, pods[0]["metadata"]["name"], CONTAINER_NAME, tail), nl=False)


def delete(
    name: Annotated[str, typer.Argument(help="TrainingPipeline name.")],
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Delete a TrainingPipeline; the operator deletes its PyTorchJobs first."""
    ns = _namespace(namespace, kubeconfig, context)
    if not _connect(kubeconfig, context).delete_pipeline(ns, name):
        die(f"trainingpipeline {ns}/{name} not found")
    out.print(f"trainingpipeline.zhinao.ai/{name} deleted from namespace {ns}")


operator_app = typer.Typer(
    help="The operator of TrainingPipelines and Ablations (what the zhinao-operator chart runs).", no_args_is_help=True
)


def operator_run(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Watch only these namespaces (repeatable); default: all."),
    ] = None,
    metrics_port: Annotated[int, typer.Option(help="Port of the operator's /metrics.")] = 8000,
    health_port: Annotated[int, typer.Option(help="Port of /healthz (kopf's liveness endpoint).")] = 8080,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Run the operator in the foreground (in-cluster credentials inside a pod)."""
    import logging

    from zhinao_k8s.controller.k8s import Cluster, load_client
    from zhinao_k8s.controller.operator import run_operator

    logging.basicConfig(
        level=os.environ.get("ZHINAO_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cluster = Cluster(load_client(str(kubeconfig) if kubeconfig else None, context))
    run_operator(namespaces=namespace or None, metrics_port=metrics_port, health_port=health_port, cluster=cluster)


operator_app.command("run")(api_errors(operator_run))
COMMANDS = {"submit": submit, "status": status, "list": list_, "logs": logs, "delete": delete}


def register(app: typer.Typer) -> None:
    """Add the cluster commands to the root `zhinao-k8s` app."""
    for name, fn in COMMANDS.items():
        app.command(name, epilog="Docs: docs/kubernetes.md")(api_errors(fn))
    app.add_typer(operator_app, name="operator")
