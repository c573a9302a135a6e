"""images/: pinned, non-root Dockerfiles, and every command a rendered job or chart runs exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dockerfiles import IMAGES, REPO, arg_defaults, dockerfile, instructions

from zhinao_k8s.render.pytorchjob import TRAINER_ARGS, TRAINER_COMMAND

VENV_BIN = Path(sys.executable).parent
DOCKERFILES = {name: dockerfile(name) for name in IMAGES}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_and_versions_are_pinned(name: str) -> None:
    text, args = DOCKERFILES[name], arg_defaults(DOCKERFILES[name])
    for base in instructions(text, "FROM"):
        ref = base.split()[0]
        ref = args.get(ref.strip("${}"), ref) if ref.startswith("${") else ref
        if ref == "build" or " AS " in base and ref in ("build",):
            continue
        assert re.search(r":\d[\w.\-]*$|@sha256:[0-9a-f]{64}$", ref), f"{name}: {ref} is not pinned"
        assert ":latest" not in ref
    for key, value in args.items():
        if key.endswith("_VERSION"):
            assert re.fullmatch(r"\d[\w.\-+]*", value), f"{name}: {key}={value} is not a pinned version"


@pytest.mark.parametrize("name, uid", [("trainer", "1000"), ("operator", "65532")])
def test_runs_as_the_non_root_user_the_manifests_expect(name: str, uid: str) -> None:
    (user,) = instructions(DOCKERFILES[name], "USER")
    assert user.split(":")[0] == uid


def test_trainer_has_no_entrypoint() -> None:
    """The rendered job's command is the entry point (test_dockerfiles.py checks the pins)."""
    text = DOCKERFILES["trainer"]
    assert not instructions(text, "ENTRYPOINT") and not instructions(text, "CMD")


def test_operator_image_has_no_torch() -> None:
    text = DOCKERFILES["operator"]
    assert re.findall(r'"\.\[([^\]]*)\]"', text) == ["operator"]
    assert not [run for run in instructions(text, "RUN") if "torch" in run or "cuda" in run.lower()]


def test_operator_code_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import zhinao_k8s.cli.cluster, zhinao_k8s.controller.operator, zhinao_k8s.controller.handlers, zhinao_k8s.cli.app"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_trainer_command_exists() -> None:
    """What every rendered PyTorchJob runs: `torchrun ... -m zhinao`."""
    assert TRAINER_COMMAND == ["torchrun"] and TRAINER_ARGS[-2:] == ["-m", "zhinao"]
    assert (VENV_BIN / "torchrun").exists() or pytest.fail("torchrun is missing from the environment (the train extra)")
    for path in sorted((REPO / "manifests" / "examples").glob("*.yaml")):
        jobs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc["kind"] == "PyTorchJob"]
        for replica in (r for doc in jobs for r in doc["spec"]["pytorchReplicaSpecs"].values()):
            (container,) = replica["template"]["spec"]["containers"]
            assert container["command"] == TRAINER_COMMAND and container["args"] == TRAINER_ARGS, path.name
    # `python -m zhinao` (the trainer) and `python -m zhinao.wait_inputs` (the init container) resolve.
    for module in ("zhinao.__main__", "zhinao.wait_inputs"):
        code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_operator_command_exists() -> None:
    """What the chart's Deployment runs: `zhinao-k8s operator run` (its --help exits 0)."""
    exe = VENV_BIN / "zhinao-k8s"
    assert exe.exists(), "install the project: pip install -e ."
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([str(exe), "operator", "run", "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    for flag in ("--metrics-port", "--health-port", "--namespace"):
        assert flag in out.stdout
