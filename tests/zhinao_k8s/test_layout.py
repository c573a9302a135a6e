"""The operator package's import rules, read from the source (AST), so a violation fails here
before it fails in an image."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "zhinao_k8s"
IO_MODULES = ("kubernetes", "kopf", "minio", "torch.distributed", "prometheus_client")
PURE = [
    *sorted((PACKAGE / "api").glob("*.py")),
    *sorted((PACKAGE / "render").glob("*.py")),
    PACKAGE / "controller" / "plan_pipeline.py",
    PACKAGE / "controller" / "plan_ablation.py",
    PACKAGE / "controller" / "pipeline_status.py",
    PACKAGE / "runner" / "env.py",
]


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (lazy imports inside functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_modules_import_no_io(path: Path) -> None:
    bad = sorted(m for m in imports(path) if any(under(m, io) for io in IO_MODULES))
    assert not bad, f"{path.relative_to(PACKAGE)} is pure but imports {bad}"


def test_the_in_image_jobs_stay_out_of_the_runner_and_cli() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for folder in ("runner", "cli")
        for path in sorted((PACKAGE / folder).glob("*.py"))
        if any(under(m, "zhinao_k8s.jobs") for m in imports(path))
    ]
    assert not offenders, f"import zhinao_k8s.jobs: {offenders}"


def test_the_rules_see_a_violation(tmp_path: Path) -> None:
    """Not vacuous: a lazy import inside a function is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from zhinao_k8s.jobs.ablation_step import main\n    import kopf\n")
    assert {"zhinao_k8s.jobs.ablation_step", "kopf"} <= imports(bad)
