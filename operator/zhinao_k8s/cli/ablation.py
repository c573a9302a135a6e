"""`zhinao-k8s ablation`: run, evaluate, report and render an Ablation (the 360Zhinao technical report, section 2.6), or
submit it to a cluster and follow it there (submit, status, report NAME)."""

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from zhinao_k8s.cli._options import ContextOpt, KubeconfigOpt, NamespaceOpt, OutputFormat, OutputOpt
from zhinao_k8s.cli.cluster import api_errors
from zhinao_k8s.cli.errors import die, friendly

out = Console(highlight=False)
app = typer.Typer(
    name="ablation",
    help="Compare data recipes on a small proxy model: recipes x seeds pretraining runs, evaluations, statistics.",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
SpecArg = Annotated[Path, typer.Argument(help="Ablation YAML file.")]
WorkdirOpt = Annotated[Path, typer.Option(help="Logs, per-replica scratch and evaluation scratch.")]


def _load(spec: Path, storage: str | None = None):
    from zhinao_k8s.api.ablation import load_ablation, parse_ablation

    ablation = load_ablation(spec)
    if storage:
        doc = ablation.to_wire()
        doc["spec"]["storage"]["uri"] = storage
        ablation = parse_ablation(json.dumps(doc), str(spec))
    return ablation


class Progress:
    """One line per event, with the elapsed time: runs are minutes apart, a live table adds nothing."""

    def __init__(self):
        self.began = time.time()

    def __call__(self, event: str, data: dict) -> None:
        t = f"[dim]{time.time() - self.began:7.1f}s[/]"
        if event == "prep":
            out.print(f"{t} prepare: {data['step']}")
        elif event in ("run-started", "eval-started", "run-skipped"):
            verb = {"run-started": "train", "eval-started": "evaluate", "run-skipped": "train (done, reused)"}[event]
            out.print(f"{t} {verb} [bold]{data['run']}[/] ({data['i']}/{data['n']})")
        elif event == "run-finished":
            out.print(f"{t}   {data['run']} finished in {data['seconds']:.1f}s")
        elif event == "report":
            out.print(f"{t} report: {data['uri']}")


@app.command()
@friendly
def run(
    spec: SpecArg,
    workdir: WorkdirOpt = Path("runs/ablation"),
    storage: Annotated[str | None, typer.Option(help="Override spec.storage.uri (e.g. file://<dir>).")] = None,
    in_process: Annotated[
        bool, typer.Option(help="Train in this process (world size 1) instead of torchrun replicas.")
    ] = False,
    threads: Annotated[int, typer.Option(help="CPU threads per run (0: leave the default).")] = 1,
) -> None:
    """Prepare the data, train every recipe x seed with the local PyTorchJob runner, evaluate, print the report.

    Resumable: prepared data, finished runs and evaluated runs under the storage URI are reused."""
    from zhinao_k8s.runner.ablation import run_ablation

    ablation = _load(spec, storage)
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.time()
    report = run_ablation(
        ablation, workdir=workdir, listener=Progress(), in_process=in_process, threads_per_run=threads or None
    )
    print_report(report)
    out.print(f"[green]done[/] in {time.time() - began:.0f}s")


@app.command()
@friendly
def prepare(
    spec: SpecArg,
    workdir: WorkdirOpt = Path("runs/ablation"),
    storage: Annotated[str | None, typer.Option(help="Override spec.storage.uri.")] = None,
) -> None:
    """Only build the data (the data stages through the local runner, then the held-out split, shared
    tokenizer and recipe mixtures), e.g. before submitting the runs."""
    from zhinao_k8s.runner.ablation import prepare_ablation, threads

    ablation = _load(spec, storage)
    with threads(1):
        summary = prepare_ablation(ablation, workdir=workdir, listener=Progress())
    out.print_json(data=summary)


@app.command()
@friendly
def demo(
    workdir: WorkdirOpt = Path("runs/ablation-demo"),
    docs: Annotated[int, typer.Option(help="Real documents in the demo corpus.")] = 1500,
    fresh: Annotated[bool, typer.Option(help="Start from an empty workdir; --no-fresh resumes.")] = True,
) -> None:
    """The embedded ablation demo: dedup on vs off and paragraph deletion 10% vs 30% on the demo corpus,
    tiny proxy, 3 seeds each, with the SFT evaluation, through the local PyTorchJob runner (CPU: measured
    22 minutes on 2 shared cores, docs/ablation.md)."""
    import shutil

    from zhinao.data.demo_corpus import build_demo_corpus
    from zhinao_k8s.api.ablation import parse_ablation
    from zhinao_k8s.cli.local import to_yaml
    from zhinao_k8s.examples import example_text
    from zhinao_k8s.runner.ablation import run_ablation

    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    store = f"file://{(workdir / 'store').resolve()}"
    ablation = parse_ablation(
        example_text("ablation-demo").replace("file://runs/ablation-demo/store", store), "embedded ablation demo"
    )
    if not (workdir / "store" / "corpus").exists():
        out.print(f"demo corpus: {build_demo_corpus(store, n_docs=docs)}")
    (workdir / "ablation.yaml").write_text(to_yaml([ablation.to_wire()]))
    began = time.time()
    rep = run_ablation(ablation, workdir=workdir, listener=Progress())
    print_report(rep, metrics=["valid_loss", "bench/avg", "train_loss"])
    out.print(
        f"[green]done[/] in {time.time() - began:.0f}s; full report: {workdir / 'store' / ablation.metadata.name / 'report' / 'report.md'}"
    )


@app.command()
@friendly
def evaluate(
    spec: SpecArg,
    workdir: WorkdirOpt = Path("runs/ablation"),
    storage: Annotated[str | None, typer.Option(help="Override spec.storage.uri.")] = None,
) -> None:
    """Evaluate finished runs (for example after a cluster ran them) and write the report."""
    from zhinao_k8s.runner.ablation import evaluate_ablation, threads

    ablation = _load(spec, storage)
    with threads(1):
        print_report(evaluate_ablation(ablation, workdir=workdir, listener=Progress()))


@app.command()
@api_errors
def report(
    where: Annotated[
        str,
        typer.Argument(
            help="An Ablation spec file, a report directory, a report.json, or the "
            "NAME of an Ablation on the cluster (a path that exists wins)."
        ),
    ],
    storage: Annotated[str | None, typer.Option(help="Override spec.storage.uri when WHERE is a spec.")] = None,
    metric: Annotated[list[str], typer.Option(help="Only these metrics (repeatable).")] = [],
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Print an ablation's result: metric ranking with flags, per-recipe means/std/CI, pairwise tests."""
    import re

    from zhinao_k8s.api.rules import DNS_1123_LABEL

    on_cluster = not Path(where).exists() and re.match(DNS_1123_LABEL, where)
    rep = cluster_report(where, namespace, kubeconfig, context) if on_cluster else load_report(where, storage)
    print_report(rep, metrics=metric or None)


@app.command()
@friendly
def render(spec: SpecArg) -> None:
    """Print the PyTorchJobs of the data pipeline (one data stage per corpus to process) and of every
    run as YAML (offline). The runs read what `ablation prepare` builds from the data stages' output."""
    from zhinao_k8s.cli.local import to_yaml
    from zhinao_k8s.render.ablation_runs import data_pipeline, expand_runs
    from zhinao_k8s.render.pytorchjob import render_pipeline

    ablation = _load(spec)
    data = data_pipeline(ablation)
    pipelines = ([data] if data is not None else []) + [run.pipeline for run in expand_runs(ablation)]
    jobs = [job for pipeline in pipelines for job in render_pipeline(pipeline)]
    print(to_yaml(jobs), end="")


def load_report(where: str, storage: str | None = None) -> dict:
    path = Path(where)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        from zhinao_k8s.render.ablation_runs import root_uri
        from zhinao_k8s.stores import open_spec_store

        ablation = _load(path, storage)
        store = open_spec_store(root_uri(ablation) + "/report", ablation.spec.storage)
        return json.loads(store.get_bytes("report.json"))
    if path.is_dir():
        path = path / "report.json" if (path / "report.json").exists() else path / "report" / "report.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no report.json at {where} (give an Ablation spec, a report directory or a report.json)"
        )
    return json.loads(path.read_text())


def _f(x, digits: int = 4) -> str:
    from zhinao.ablation.results import fmt

    return fmt(float(x) if isinstance(x, str) else x, digits)


def print_report(rep: dict, metrics: list[str] | None = None) -> None:
    names = [m for m in rep["metrics"] if metrics is None or m in metrics]
    from zhinao.ablation.results import chance_line

    out.print(
        f"[bold]ablation {rep['ablation']}[/]: {len(rep['runs'])} runs, recipes {', '.join(rep['recipes'])}; "
        f"detected = Welch p, Holm-adjusted within the metric, < {rep['alpha']}. {chance_line(rep)}"
    )
    rank = Table(title="metric quality (most useful first)")
    for col in ("metric", "seed std", "CV", "sensitivity", "ANOVA p", "detected pairs", "flags"):
        rank.add_column(col)
    for q in rep["ranking"]:
        if q["metric"] in names:
            flags = ", ".join(q["flags"])
            rank.add_row(
                q["metric"],
                _f(q["noise"]),
                _f(q["cv"], 3),
                _f(q["sensitivity"], 2),
                _f(q["anova_p"], 3),
                f"{q['detected_pairs']}/{q['pairs']}",
                f"[yellow]{flags}[/]" if flags else "[green]ok[/]",
            )
    out.print(rank)
    for name in names:
        m = rep["metrics"][name]
        t = Table(title=name)
        for col in ("recipe", "mean", "std", "95% CI", "seeds"):
            t.add_column(col)
        for recipe, s in m["recipes"].items():
            t.add_row(
                recipe,
                _f(s["mean"]),
                _f(s["std"]),
                f"[{_f(s['ci_low'])}, {_f(s['ci_high'])}]",
                ", ".join(_f(v) for v in s.get("values", [])),
            )
        out.print(t)
        p = Table(show_header=True)
        for col in ("a - b", "difference", "effect size d", "Welch p", "Holm p", "detected"):
            p.add_column(col)
        for pair in m["pairs"]:
            p.add_row(
                f"{pair['a']} - {pair['b']}",
                _f(pair["diff"]),
                _f(pair["effect_size"], 2),
                _f(pair["p"], 3),
                _f(pair["p_holm"], 3),
                "[bold green]yes[/]" if pair["detected"] else "no",
            )
        out.print(p)


# -- on a cluster: the operator runs the Ablation (docs/ablation.md, "On a cluster") ---------------


def _ablation_body(name: str, namespace: str | None, kubeconfig: Path | None, context: str | None):
    from zhinao_k8s.cli.cluster import _connect, _namespace

    cluster = _connect(kubeconfig, context)
    ns = _namespace(namespace, kubeconfig, context)
    body = cluster.get_ablation(ns, name)
    if body is None:
        die(f"ablation {ns}/{name} not found")
    return cluster, ns, body


def cluster_report(name: str, namespace: str | None, kubeconfig: Path | None, context: str | None) -> dict:
    """report.json of a Succeeded Ablation, read from its storage (endpoint from the spec; credentials,
    as for every storage access, from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)."""
    from zhinao_k8s.controller.plan_ablation import ablation_from_body
    from zhinao_k8s.stores import open_spec_store

    _, ns, body = _ablation_body(name, namespace, kubeconfig, context)
    st = body.get("status") or {}
    if not st.get("report"):
        die(f"ablation {ns}/{name} has no report yet (phase {st.get('phase', 'Pending')})")
    storage = ablation_from_body(body).spec.storage
    folder = st["report"].rsplit("/", 1)[0]
    return json.loads(open_spec_store(folder, storage).get_bytes("report.json"))


@app.command()
@api_errors
def submit(
    spec: SpecArg, namespace: NamespaceOpt = None, kubeconfig: KubeconfigOpt = None, context: ContextOpt = None
) -> None:
    """Validate an Ablation and create it in the cluster: the operator prepares the data, runs every
    recipe x seed as a TrainingPipeline, then evaluates and writes the report."""
    from zhinao_k8s.api.ablation import load_ablation
    from zhinao_k8s.cli.cluster import _connect, placed_document

    ablation = load_ablation(spec)
    doc, ns = placed_document(spec, ablation.metadata.namespace, namespace, kubeconfig, context)
    _connect(kubeconfig, context).create_ablation(ns, doc)
    name = ablation.metadata.name
    out.print(f"ablation.zhinao.ai/{name} created in namespace {ns}")
    out.print(f"follow it with: zhinao-k8s ablation status {name} -n {ns}", style="dim")


@app.command()
@api_errors
def status(
    name: Annotated[str, typer.Argument(help="Ablation name.")],
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Phase, runs done, the report once written, and every run's TrainingPipeline."""
    from zhinao_k8s.api.status import printer_fields
    from zhinao_k8s.cli.cluster import _age, _dump
    from zhinao_k8s.render.names import LABEL_RECIPE, LABEL_SEED

    cluster, ns, body = _ablation_body(name, namespace, kubeconfig, context)
    st = body.get("status") or {}
    rows = []
    for run_name, run in sorted(cluster.list_ablation_runs(ns, name).items()):
        labels = run["metadata"].get("labels") or {}
        rows.append(
            {
                "name": run_name,
                "recipe": labels.get(LABEL_RECIPE, ""),
                "seed": labels.get(LABEL_SEED, ""),
                **printer_fields(run.get("status")),
                "age": _age(run["metadata"].get("creationTimestamp")),
            }
        )
    if output != OutputFormat.table:
        _dump({"name": name, "namespace": ns, **st, "pipelines": rows}, output)
        return
    counts = st.get("runs") or {}
    failed = f", {counts['failed']} failed" if counts.get("failed") else ""
    out.print(
        f"[bold]{name}[/] ({ns})  phase [bold]{st.get('phase', 'Pending')}[/]  runs {st.get('progress') or '-'}{failed}"
    )
    if st.get("message"):
        out.print(f"  {st.get('reason', '')}: {st['message']}", markup=False)
    table = Table("RUN", "RECIPE", "SEED", "PHASE", "STAGE", "PROGRESS", "AGE", box=None)
    for r in rows:
        table.add_row(r["name"], r["recipe"], r["seed"], r["phase"], r["stage"], r["progress"], r["age"])
    out.print(table)
    if st.get("report"):
        out.print(f"report: {st['report']}  (zhinao-k8s ablation report {name} -n {ns})")
