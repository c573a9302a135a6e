"""Root of the `zhinao-k8s` command: assembles the sub-commands, handles --version and errors."""

from typing import Annotated

import typer

from zhinao_k8s import __version__
from zhinao_k8s.cli import ablation, cluster, data, local
from zhinao_k8s.cli.errors import friendly
from zhinao_k8s.cli.plan import plan

app = typer.Typer(
    name="zhinao-k8s",
    help="Train LLMs the 360Zhinao way on Kubernetes: one TrainingPipeline spec -> Kubeflow PyTorchJobs.\n\n"
    "Offline: validate, plan, render, run (local runner), demo. On a cluster: submit, status, list, logs, delete.",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"zhinao-k8s {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    pass


for command in (local.validate, plan, local.render, local.run, local.demo):
    app.command(epilog="Docs: docs/ in the repository.")(friendly(command))
cluster.register(app)  # submit, status, list, logs, delete, `operator run`
app.add_typer(data.app, name="data")
app.add_typer(ablation.app, name="ablation")


def main() -> None:
    app()
