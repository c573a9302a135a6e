"""The repository's scripts (bench/, hack/) imported as modules, for tests of what they compute."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).parents[1]


def load_script(relative: str) -> ModuleType:
    """`relative` ("bench/ring_attention.py") run as a fresh module named after its folder and stem,
    its folder on sys.path meanwhile, as `python bench/x.py` has it (gpu_check imports its siblings)."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f"{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module
