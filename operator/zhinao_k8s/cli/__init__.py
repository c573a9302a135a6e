"""The `zhinao-k8s` command line: thin Typer commands that call library functions."""
