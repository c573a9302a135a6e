"""`zhinao-k8s plan SPEC`: the per-GPU memory of one training step of every GPU stage.

The planner needs torch and transformers (the train extra); it is imported when a plan runs, so
the CLI's other commands work where only the operator extra is installed.
"""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from zhinao_k8s.api.load import SpecError, load_pipeline
from zhinao_k8s.cli.errors import EXIT_SPEC

out = Console(highlight=False, width=150)  # the table is wider than a default terminal
SpecArg = Annotated[Path, typer.Argument(help="TrainingPipeline YAML file.", exists=False)]


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f}"


def fit_table(fits: list) -> Table:
    """One row per planned GPU stage (zhinao_k8s.fit.StageFit)."""
    table = Table(
        "stage", "engine", "AC", "ranks", "params", "grads", "optim", "acts", "temps", "peak GB", "GPU GB", "fits"
    )
    for fit in fits:
        if fit.plan is None:
            table.add_row(fit.name, f"not planned: {fit.skipped}", *[""] * 10)
            continue
        b = fit.plan.breakdown
        table.add_row(
            fit.name,
            fit.plan.engine,
            fit.plan.activation_checkpointing,
            fit.plan.ranks,
            *(_gb(b[k]) for k in ("parameters", "gradients", "optimizer", "activations", "temporaries")),
            _gb(fit.plan.peak),
            _gb(fit.capacity),
            "[red]no[/]" if fit.refused else "[green]yes[/]",
        )
    return table


def check_fit(spec: Path) -> list:
    """Plan every GPU stage; raise SpecError naming each stage that does not fit."""
    from zhinao_k8s.fit import plan_pipeline, refusal

    fits = plan_pipeline(load_pipeline(spec))
    refused = [refusal(f) for f in fits if f.refused]
    if refused:
        out.print(fit_table(fits))
        raise SpecError(str(spec), refused)
    return fits


def plan(spec: SpecArg) -> None:
    """Per-GPU peak memory of one training step of each GPU stage (fake tensors on CPU); exit 2 if one does not fit."""
    from zhinao_k8s.fit import plan_pipeline, refusal

    fits = plan_pipeline(load_pipeline(spec))
    out.print(fit_table(fits))
    refused = [refusal(f) for f in fits if f.refused]
    for line in refused:
        out.print(f"[red]refused[/] {line}", markup=True)
    if refused:
        raise typer.Exit(EXIT_SPEC)
