"""`zhinao-k8s data ...`: look at what the data stage did."""

from typing import Annotated

import typer

from zhinao_k8s.api.rules import uri_problem
from zhinao_k8s.cli.errors import EXIT_SPEC, die, friendly

app = typer.Typer(help="Data stage tools.", no_args_is_help=True)


@app.command()
@friendly
def report(
    output: Annotated[str, typer.Argument(help="The data stage's output URI (s3://bucket/prefix or file:///path).")],
) -> None:
    """Print the retention cascade (documents and bytes in, out and removed per step), like the
    360Zhinao technical report's Figure 1, and where its table and PNG are stored."""
    from zhinao.artifacts import StageOutput
    from zhinao.data.retention import RETENTION_JSON, has_retention, show_retention

    if problem := uri_problem(output):
        die(f"OUTPUT: {problem}", EXIT_SPEC)
    published = StageOutput.at(output).store
    if not has_retention(published):
        die(f"{output}: no {RETENTION_JSON} here (has the data stage run, and is this its output?)")
    typer.echo(show_retention(published))
