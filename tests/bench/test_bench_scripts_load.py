"""Every bench script imports: what it names from the library still exists (a bench is run by hand,
months apart, so nothing else would notice a renamed function)."""

import pytest
from scripts import REPO, load_script

BENCHES = sorted(p.name for p in (REPO / "bench").glob("*.py"))


@pytest.mark.parametrize("name", BENCHES)
def test_the_bench_script_loads(name):
    module = load_script(f"bench/{name}")
    assert module.__doc__, f"bench/{name} says what it measures in its docstring"
