"""Offline commands: validate, render, run (local PyTorchJob runner), demo."""

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from zhinao_k8s.api.load import load_pipeline, parse_pipeline
from zhinao_k8s.api.secrets import load_secrets
from zhinao_k8s.api.v1alpha1 import TrainingPipeline
from zhinao_k8s.cli.errors import EXIT_FAILED, EXIT_SPEC, die, sigterm_as_interrupt
from zhinao_k8s.cli.progress import RunDisplay
from zhinao_k8s.examples import example_text
from zhinao_k8s.render.pytorchjob import render_pipeline
from zhinao_k8s.runner.pipeline import PipelineResult, run_training_pipeline
from zhinao_k8s.stores import open_spec_store

out = Console(highlight=False)
SpecArg = Annotated[Path, typer.Argument(help="TrainingPipeline YAML file.", exists=False)]


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


def to_yaml(objs: list[dict]) -> str:
    return yaml.dump_all(objs, Dumper=_NoAliases, sort_keys=False, default_flow_style=False)


def validate(spec: SpecArg) -> None:
    """Check a spec; print one `field.path: reason` line per problem (exit code 2)."""
    pipeline = load_pipeline(spec)
    out.print(
        f"[green]ok[/] {pipeline.metadata.name}: {len(pipeline.spec.stages)} stages "
        f"({', '.join(s.name for s in pipeline.spec.stages)})"
    )


def render(
    spec: SpecArg,
    stage: Annotated[list[str], typer.Option(help="Render only these stages (repeatable).")] = [],
) -> None:
    """Print each stage's ConfigMap and PyTorchJob as YAML (offline; pipe into `kubectl apply -f -`:
    each stage's pods wait until the outputs of the stages it reads have succeeded)."""
    pipeline = load_pipeline(spec)
    unknown = [name for name in stage if name not in {s.name for s in pipeline.spec.stages}]
    if unknown:
        die(
            f"--stage: no stage {', '.join(unknown)} in {spec} (stages: {', '.join(s.name for s in pipeline.spec.stages)})",
            EXIT_SPEC,
        )
    print(to_yaml(render_pipeline(pipeline, only=stage or None)), end="")


def run_local(
    pipeline: TrainingPipeline,
    workdir: Path,
    secrets: dict,
    only: list[str] | None,
    verbose: bool,
    overwrite: list[str] | None = None,
) -> PipelineResult:
    workdir.mkdir(parents=True, exist_ok=True)
    common = {"workdir": workdir, "secrets": secrets, "only": only, "overwrite": overwrite}
    if verbose:
        return run_training_pipeline(pipeline, echo_logs=True, **common)
    with RunDisplay(pipeline, workdir) as display:
        return run_training_pipeline(pipeline, listener=display, **common)


def headline(summary: dict) -> str:
    """The few numbers a stage's summary.json has that people look for first."""
    parts = []
    if summary.get("docs_written") is not None:
        parts.append(f"{summary['docs_written']:,} documents kept")
    if summary.get("vocab_size"):
        parts.append(f"vocabulary {summary['vocab_size']:,}")
    if isinstance(summary.get("tokens"), int):
        parts.append(f"{summary['tokens']:,} tokens")
    if summary.get("loss_first") is not None:
        parts.append(f"loss {summary['loss_first']:.3f} -> {summary['loss_last']:.3f}")
    if summary.get("tokens_per_second"):
        parts.append(f"{summary['tokens_per_second']:,.0f} tokens/s")
    if summary.get("mfu_mean") is not None and summary["mfu_mean"] == summary["mfu_mean"]:
        parts.append(f"MFU {summary['mfu_mean']:.1%}")
    if summary.get("held_out_accuracy") is not None:
        before = summary.get("held_out_accuracy_before")
        parts.append(
            "held-out accuracy "
            + (f"{before:.2f} -> " if before is not None else "")
            + f"{summary['held_out_accuracy']:.2f}"
        )
    if summary.get("eval_before") and summary.get("eval_after"):
        b, a = summary["eval_before"], summary["eval_after"]
        parts.append(
            f"checked reward greedy {b['greedy']['rule']:.2f} -> {a['greedy']['rule']:.2f}, "
            f"sampled {b['sampled']['rule']:.2f} -> {a['sampled']['rule']:.2f}"
        )
    if summary.get("reward_guard"):
        parts.append(summary["reward_guard"]["sentence"])
    return ", ".join(parts)


def print_result(result: PipelineResult, pipeline: TrainingPipeline, secrets: dict | None = None) -> None:
    from zhinao.artifacts import StageOutput

    table = Table(title="summary")
    for col in ("stage", "result", "seconds", "restarts", "outputs"):
        table.add_column(col)
    for name, job in result.stages:
        table.add_row(
            name,
            "[green]Succeeded[/]" if job.succeeded else "[red]Failed[/]",
            f"{job.seconds:.1f}",
            str(job.restarts),
            pipeline.output_of(pipeline.stage(name)),
        )
    out.print(table)
    for name, job in result.stages:
        if not job.succeeded:
            out.print(f"[red]{name} failed:[/] {job.reason}")
            continue
        output = StageOutput(open_spec_store(pipeline.output_of(pipeline.stage(name)), pipeline.spec.storage, secrets))
        if not output.is_finished():
            continue
        summary = output.read_summary()
        out.print(f"[bold]{name}[/]: {headline(summary)}")
        for key in ("checkpoints", "hf", "loss_curve", "report"):
            if isinstance(summary.get(key), str):
                out.print(f"  {key:<11} {summary[key]}")


def run(
    spec: SpecArg,
    workdir: Annotated[Path, typer.Option(help="Logs and per-replica scratch directories.")] = Path("runs/local"),
    secret: Annotated[list[Path], typer.Option(help="Kubernetes Secret manifest(s) the jobs reference.")] = [],
    stage: Annotated[list[str], typer.Option(help="Run only these stages (repeatable).")] = [],
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Stream every replica's log.")] = False,
    overwrite: Annotated[
        list[str],
        typer.Option(
            help="Replace these stages' outputs when a run with other params or inputs wrote them (repeatable)."
        ),
    ] = [],
) -> None:
    """Run every stage locally, exactly as the rendered PyTorchJobs would run on a cluster.

    One process per replica with the training operator's environment (MASTER_ADDR, WORLD_SIZE,
    RANK, PET_*); a failed container restarts in place, as the stage's restartPolicy and backoffLimit
    allow. Ctrl-C or SIGTERM stops every replica as kubelet would (SIGTERM, grace period, SIGKILL).
    A stage resumes an output its own params and inputs wrote, and refuses one a different run
    wrote unless it is listed in --overwrite.
    """
    pipeline = load_pipeline(spec)
    secrets = load_secrets(secret)
    with sigterm_as_interrupt():
        result = run_local(pipeline, workdir, secrets, stage or None, verbose, overwrite or None)
    print_result(result, pipeline, secrets)
    if not result.succeeded:
        raise typer.Exit(EXIT_FAILED)


def demo_pipeline(workdir: Path) -> TrainingPipeline:
    """The embedded demo spec with its storage moved under `workdir`."""
    store = f"file://{(workdir / 'store').resolve()}"
    text = example_text("demo").replace("file://runs/demo/store", store)
    return parse_pipeline(text, "embedded demo spec")


def demo(
    workdir: Annotated[Path, typer.Option(help="Where the corpus, checkpoints and report go.")] = Path("runs/demo"),
    docs: Annotated[
        int, typer.Option(help="Real documents in the demo corpus (plus planted junk and duplicates).")
    ] = 1500,
    fresh: Annotated[
        bool, typer.Option(help="Start from an empty workdir; --no-fresh resumes a previous demo.")
    ] = True,
) -> None:
    """The whole recipe on a laptop: clean and deduplicate a corpus built from the Python standard
    library's docstrings, train a tokenizer, pretrain a tiny 360Zhinao model with 2 ranks, then SFT,
    a reward model and RLHF (ReMax) on single-digit addition -- every stage a PyTorchJob run by the
    local runner (CPU, under 10 minutes).

    Everything lands under WORKDIR: pipeline.yaml (the spec that ran), store/ (the object store:
    corpus, tokenizer, checkpoints, HF weights, metrics), logs/ and REPORT.md with the loss curve."""
    import shutil

    from zhinao.data.demo_corpus import build_demo_corpus
    from zhinao.synthetic import write_demo_alignment_data

    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pipeline = demo_pipeline(workdir)
    counts = build_demo_corpus(pipeline.spec.storage.uri, n_docs=docs)
    out.print(f"demo corpus -> {pipeline.spec.storage.uri}/corpus: {counts}")
    write_demo_alignment_data(pipeline.spec.storage.uri)
    (workdir / "pipeline.yaml").write_text(to_yaml([pipeline.to_wire()]))
    with sigterm_as_interrupt():
        result = run_local(pipeline, workdir, {}, None, False)
    print_result(result, pipeline)
    overview = write_run_overview(workdir, pipeline, result)
    out.print(f"report: {overview}")
    if not result.succeeded:
        raise typer.Exit(EXIT_FAILED)


def write_run_overview(workdir: Path, pipeline: TrainingPipeline, result: PipelineResult) -> Path:
    """REPORT.md beside the run (the file name users know): one section per stage with its summary
    and the plots from the stage's `report/` folder."""
    from zhinao.artifacts import StageOutput

    lines = [
        f"# {pipeline.metadata.name}: local run report",
        "",
        "| stage | kind | result | seconds | restarts |",
        "|---|---|---|---|---|",
    ]
    for name, job in result.stages:
        lines.append(
            f"| {name} | {pipeline.stage(name).kind} | {'Succeeded' if job.succeeded else 'Failed'} "
            f"| {job.seconds:.1f} | {job.restarts} |"
        )
    for name, _job in result.stages:
        output = StageOutput(open_spec_store(pipeline.output_of(pipeline.stage(name)), pipeline.spec.storage))
        store = output.store
        lines += ["", f"## {name}", "", f"Output: `{store.uri}`"]
        keys = output.report_keys()
        if output.is_finished() and not any(k.endswith(".md") for k in keys):
            lines += ["", "```json", json.dumps(output.read_summary(), indent=2), "```"]
        for key in keys:
            if key.endswith(".png"):
                local = workdir / "report" / f"{name}-{Path(key).name}"
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(store.get_bytes(key))
                lines += ["", f"![{name} {Path(key).stem}](report/{local.name})"]
            elif key.endswith(".md"):
                lines += ["", store.get_bytes(key).decode().strip()]
    path = workdir / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path
