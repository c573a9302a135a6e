"""Each image installs exactly the extras its entry points import.

The import tree of every entry point is walked in the source (AST), following first-party modules;
every third-party import must come from a distribution the image installs (its Dockerfile's pins and
project extras, with their dependencies), and every extra it installs must be imported somewhere.
Imports guarded by `except ImportError` are optional and `if TYPE_CHECKING:` ones never run.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfiles import REPO, pip_installs, pyproject
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from zhinao.stages import STAGE_MODULES
from zhinao_k8s.render.ablation import JOB_MODULE
from zhinao_k8s.render.plan_job import PLAN_MODULE

FIRST_PARTY = {"zhinao": REPO / "zhinao", "zhinao_k8s": REPO / "operator" / "zhinao_k8s"}


@dataclass(frozen=True)
class Entry:
    module: str
    lazy: bool
    """True: also follow imports inside functions (everything the entry point may run);
    False: only what `import module` executes (a console script that must load)."""


def console_script_module() -> str:
    return pyproject()["project"]["scripts"]["zhinao-k8s"].split(":")[0]


ENTRY_POINTS = {
    # `torchrun ... -m zhinao` in every training pod (it imports the stage's module by name from the
    # registry); `python -m zhinao.wait_inputs`, the init container of a stage that reads another's
    # output; `python -m JOB_MODULE` in an Ablation's prepare and evaluate jobs; `python -m PLAN_MODULE`
    # in a GPU stage's memory plan Job.
    "trainer": [
        Entry(m, lazy=True)
        for m in ("zhinao.__main__", "zhinao.wait_inputs", *STAGE_MODULES.values(), JOB_MODULE, PLAN_MODULE)
    ],
    # `zhinao-k8s operator run`, and the cluster commands (submit, status, ...) the image also serves.
    "operator": [Entry(console_script_module(), lazy=False), Entry("zhinao_k8s.cli.cluster", lazy=True)],
}


def module_file(name: str) -> Path | None:
    top, *rest = name.split(".")
    if top not in FIRST_PARTY:
        return None
    base = FIRST_PARTY[top].joinpath(*rest)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def _optional(handlers: list[ast.ExceptHandler]) -> bool:
    names = {n.id for h in handlers for n in ast.walk(h.type) if isinstance(n, ast.Name)} if handlers else set()
    return bool(names & {"ImportError", "ModuleNotFoundError"})


@functools.cache
def imported_names(path: Path, package: str, *, lazy: bool) -> tuple[str, ...]:
    """Absolute module names the file imports (for `from a import b`: `a.b` and `a`)."""

    def visit(nodes: list[ast.stmt]) -> Iterator[str]:
        for node in nodes:
            if isinstance(node, ast.Import):
                yield from (a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}".rstrip(".")
                yield base
                yield from (f"{base}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Try) and _optional(node.handlers):
                continue
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                yield from visit(node.orelse)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not lazy:
                continue
            else:
                yield from visit([c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)])

    return tuple(visit(ast.parse(path.read_text()).body))


def third_party_imports(entries: list[Entry]) -> dict[str, str]:
    """Top-level third-party name -> the first-party module that imports it."""
    found: dict[str, str] = {}
    for entry in entries:
        todo, seen = [entry.module], set()
        while todo:
            name = todo.pop()
            parts = name.split(".")
            # Importing a.b.c runs a/__init__ and a/b/__init__ first.
            for module in (".".join(parts[: i + 1]) for i in range(len(parts))):
                if module in seen or (path := module_file(module)) is None:
                    continue
                seen.add(module)
                package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
                for imported in imported_names(path, package, lazy=entry.lazy):
                    top = imported.split(".")[0]
                    if top in FIRST_PARTY:
                        todo.append(imported)
                    elif top and top not in sys.stdlib_module_names:
                        found.setdefault(top, module)
    return found


def closure(requirements: list[str]) -> set[str]:
    """The distributions `pip install requirements` brings, read from the installed metadata."""
    out: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in out:
            continue
        out.add(name)
        try:
            requires = md.requires(req.name) or []
        except md.PackageNotFoundError:  # a GPU-only package (flash-attn) this machine lacks: a leaf
            requires = []
        for sub in requires:
            sub_req = Requirement(sub)
            extras = req.extras or {""}
            if sub_req.marker is None or any(sub_req.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub_req)
    return out


def image_requirements(image: str) -> tuple[dict[str, list[str]], list[str]]:
    """(the project extras the image installs -> their requirements, every other requirement it installs)."""
    project = pyproject()["project"]
    installs = pip_installs(image)
    extras = {e: project["optional-dependencies"][e] for i in installs for e in i.project_extras}
    others = list(project["dependencies"]) + [r for i in installs for r in i.requirements if not r.startswith(".[")]
    return extras, others


@functools.cache
def installed_providers() -> dict[str, list[str]]:
    return md.packages_distributions()


def distributions(top: str) -> set[str]:
    """Who provides an import name; one not installed here is taken to be its own distribution's name."""
    return {canonicalize_name(d) for d in installed_providers().get(top, [top])}


@pytest.mark.parametrize("image", ENTRY_POINTS)
def test_every_import_of_the_image_is_installed_in_it(image: str) -> None:
    extras, others = image_requirements(image)
    provided = closure(others + [r for reqs in extras.values() for r in reqs])
    missing = {
        top: module
        for top, module in third_party_imports(ENTRY_POINTS[image]).items()
        if not distributions(top) & provided
    }
    assert not missing, f"{image}: imported but not installed by the image: " + ", ".join(
        f"{top} (in {module}, from {sorted(distributions(top))})" for top, module in missing.items()
    )


@pytest.mark.parametrize("image", ENTRY_POINTS)
def test_every_extra_the_image_installs_is_imported(image: str) -> None:
    extras, _ = image_requirements(image)
    imported = {d for top in third_party_imports(ENTRY_POINTS[image]) for d in distributions(top)}
    for extra, reqs in extras.items():
        assert {canonicalize_name(Requirement(r).name) for r in reqs} & imported, f"{image}: extra {extra!r} unused"


def test_the_walk_sees_lazy_imports_only_when_asked() -> None:
    """The operator's console script loads without kopf; `operator run` needs it."""
    script = [Entry(console_script_module(), lazy=False)]
    assert "kopf" not in third_party_imports(script)
    assert "kopf" in third_party_imports([Entry(console_script_module(), lazy=True)])
    assert "torch" in third_party_imports(ENTRY_POINTS["trainer"])
