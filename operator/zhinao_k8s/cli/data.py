"""`zhinao-k8s data ...`: look at what the data stage did."""

from typing import Annotated

import typer

from zhinao_k8s.cli.errors import friendly

app = typer.Typer(help="Data stage tools.", no_args_is_help=True)


@app.command()
@friendly
def report(
    output: Annotated[str, typer.Argument(help="The data stage's output URI (s3://bucket/prefix or file:///path).")],
) -> None:
    """Print the retention cascade (documents and bytes in, out and removed per step), like the
    360Zhinao technical report's Figure 1, and where its table and PNG are stored."""
    from zhinao.data.report import show_report

    typer.echo(show_report(output))
