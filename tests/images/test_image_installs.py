"""Each image's `pip install` lines resolve together against PyPI, as `docker build` would run them.

No Docker engine here, so pip stands in: `--dry-run --ignore-installed` resolves every requirement of
the image at once, from scratch, and fetches only metadata. Two honest gaps: the CUDA torch index
(download.pytorch.org) is unreachable, so torch resolves from PyPI or this machine's wheel of the same
version; and sdists build their metadata with CUDA off (FLASH_ATTENTION_SKIP_CUDA_BUILD, DS_BUILD_OPS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfiles import IMAGES, REPO, PipInstall, pip_installs
from packaging.utils import canonicalize_name
from packaging.version import Version

# Metadata only: no nvcc here, and DeepSpeed's ops are JIT-compiled in the image anyway.
NO_CUDA_BUILD = {"FLASH_ATTENTION_SKIP_CUDA_BUILD": "TRUE", "DS_BUILD_OPS": "0"}


def requirement_args(installs: list[PipInstall]) -> list[str]:
    return [f"{REPO}{r[1:]}" if r.startswith(".[") else r for i in installs for r in i.requirements]


def pip(python: Path | str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, **NO_CUDA_BUILD, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow  # a minute or two: flash-attn's sdist is fetched and its metadata built
@pytest.mark.parametrize("image", IMAGES)
def test_every_install_line_of_the_image_resolves_together(image: str, tmp_path: Path) -> None:
    installs = pip_installs(image)
    report = tmp_path / "report.json"
    # --no-build-isolation: flash-attn's and DeepSpeed's metadata import torch, as in the image's build stage.
    out = pip(
        sys.executable,
        "install",
        "--dry-run",
        "--ignore-installed",
        "--no-build-isolation",
        "--quiet",
        "--report",
        str(report),
        *requirement_args(installs),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    resolved = {
        canonicalize_name(item["metadata"]["name"]): Version(item["metadata"]["version"])
        for item in json.loads(report.read_text())["install"]
    }
    for install in installs:
        for name, version in install.pins.items():
            got = resolved.get(canonicalize_name(name))
            # torch's local label (+cu128, +cpu) names the build, not the release.
            assert got is not None and got.public == Version(version).public, f"{image}: {name}=={version} -> {got}"


@pytest.mark.slow
def test_flash_attn_builds_in_a_venv_holding_only_the_lines_before_it(tmp_path: Path) -> None:
    """The trainer's build stage: a fresh venv, then each `pip install` before flash-attn, then flash-attn
    with `--no-build-isolation` (its setup.py must import packaging, setuptools, wheel and torch)."""
    installs = pip_installs("trainer")
    (at,) = [n for n, i in enumerate(installs) if "flash-attn" in i.pins]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    out = pip(python, "install", "--quiet", *requirement_args(installs[:at]))
    assert out.returncode == 0, out.stderr[-3000:]
    flash = installs[at]
    out = pip(python, "install", "--dry-run", "--no-deps", "--no-cache-dir", *flash.options, *flash.requirements)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Would install flash_attn-" in out.stdout
