"""Fixtures of the data-stage tests: one small demo corpus per session (stdlib docstrings + planted faults)."""

import pytest

from zhinao.data.demo_corpus import build_demo_corpus


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> tuple[str, dict]:
    """(corpus URI, planted counts) of a 300-document demo corpus in 4 files."""
    root = tmp_path_factory.mktemp("demo")
    counts = build_demo_corpus(f"file://{root}", n_docs=300)
    return f"file://{root}/corpus", counts
