"""Option aliases shared by the CLI's commands (`Annotated`, so a command only lists names)."""

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class OutputFormat(str, Enum):
    table = "table"
    yaml = "yaml"
    json = "json"


NamespaceOpt = Annotated[
    str | None,
    typer.Option(
        "--namespace", "-n", help="Namespace (default: the spec's metadata.namespace, else the kubeconfig context's)."
    ),
]
KubeconfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--kubeconfig",
        help="Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster credentials).",
        dir_okay=False,
    ),
]
ContextOpt = Annotated[str | None, typer.Option("--context", help="Kubeconfig context to use.")]
OutputOpt = Annotated[OutputFormat, typer.Option("--output", "-o", help="Output format.", case_sensitive=False)]
AllNamespacesOpt = Annotated[bool, typer.Option("--all-namespaces", "-A", help="List across all namespaces.")]
