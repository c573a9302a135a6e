"""Embedded example specs (package data), so `zhinao-k8s demo` works from any directory."""

from importlib.resources import files


def example_text(name: str) -> str:
    return (files(__package__) / f"{name}.yaml").read_text(encoding="utf-8")
