"""The repository's scripts (bench/, hack/) imported as modules, for tests of what they compute."""

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).parents[1]


def load_script(relative: str) -> ModuleType:
    """`relative` ("bench/ring_attention.py") run as a fresh module named after its folder and stem."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f"{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
