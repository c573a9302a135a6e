"""Import rules, read from the source (AST): stages never import stages, pure modules do no I/O."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ROOT / "zhinao" / "stages"
IO_MODULES = ("torch.distributed", "minio", "kubernetes", "kopf")

PURE_BY_NAME = [
    "zhinao/config/**/*.py",
    "zhinao/losses.py",
    "zhinao/data/packing.py",
    "zhinao/rule_rewards.py",
    "zhinao/ablation/stats.py",
    "operator/zhinao_k8s/render/**/*.py",
    "operator/zhinao_k8s/**/plan.py",
    "operator/zhinao_k8s/**/*_plan.py",
    "operator/zhinao_k8s/**/status.py",
]
"""The pure modules the architecture names (config, losses, packing, rules, stats, render, plan, status)."""


def package_of(path: Path) -> str:
    top = ROOT / "operator" if path.is_relative_to(ROOT / "operator") else ROOT
    return ".".join(path.relative_to(top).parts[:-1])


def imported_modules(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, function-level ones included."""
    tree = ast.parse(path.read_text(), str(path))
    package = package_of(path) if package is None else package
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def says_pure(path: Path) -> bool:
    """The module docstring declares it pure ("Pure: no I/O", "(pure: ...)", "as pure functions"),
    rather than mentioning a pure part of something else ("the pure planner")."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return re.search(r"\(pure[:)]|\bPure\b|\bas pure\b", doc) is not None


def pure_modules() -> list[Path]:
    named = {p for pattern in PURE_BY_NAME for p in ROOT.glob(pattern)}
    by_docstring = {
        p
        for top in ("zhinao", "operator/zhinao_k8s")
        for p in (ROOT / top).rglob("*.py")
        if p.name != "__init__.py" and says_pure(p)
    }
    return sorted(named | by_docstring)


def test_stages_never_import_stages():
    stage_modules = {f"zhinao.stages.{p.stem}" for p in STAGES.glob("*.py") if p.name != "__init__.py"}
    assert {"zhinao.stages.sft", "zhinao.stages.rlhf"} <= stage_modules
    bad = [
        f"{p.relative_to(ROOT)}:{line}: imports {name}"
        for p in sorted(STAGES.glob("*.py"))
        if p.name != "__init__.py"
        for line, name in imported_modules(p)
        if any(name == m or name.startswith(m + ".") for m in stage_modules - {f"zhinao.stages.{p.stem}"})
        or name == "zhinao.stages"
    ]
    assert not bad, "a stage imports another stage; move the shared code to a library module:\n" + "\n".join(bad)


def test_library_code_never_imports_a_stage_module():
    """zhinao.ablation and the alignment/training libraries build on library code only."""
    bad = [
        f"{p.relative_to(ROOT)}:{line}: imports {name}"
        for sub in ("ablation", "alignment", "training", "data", "longctx")
        for p in sorted((ROOT / "zhinao" / sub).rglob("*.py"))
        for line, name in imported_modules(p)
        if name.startswith("zhinao.stages.")
    ]
    assert not bad, "\n".join(bad)


def test_pure_modules_do_no_io():
    modules = pure_modules()
    names = {str(p.relative_to(ROOT)) for p in modules}
    assert {"zhinao/losses.py", "zhinao/rule_rewards.py", "zhinao/ablation/stats.py"} <= names
    assert any(n.startswith("zhinao/config/") for n in names) and any("render" in n for n in names)
    bad = [
        f"{p.relative_to(ROOT)}:{line}: imports {name}"
        for p in modules
        for line, name in imported_modules(p)
        if any(name == m or name.startswith(m + ".") for m in IO_MODULES)
    ]
    assert not bad, "a pure module imports I/O:\n" + "\n".join(bad)


def test_the_detector_sees_what_it_must_flag(tmp_path):
    """The rules above would be vacuous if imported_modules missed these forms."""
    sample = tmp_path / "probe.py"
    sample.write_text(
        "import torch.distributed as dist\nfrom ..stages import sft\ndef f():\n    from minio import Minio\n"
    )
    names = [n for _, n in imported_modules(sample, package="zhinao.stages")]
    assert "torch.distributed" in names and "zhinao.stages.sft" in names and "minio.Minio" in names
