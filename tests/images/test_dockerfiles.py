"""images/*/Dockerfile: hadolint-clean, users that the base image can take, one version of each pin."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfiles import IMAGES, REPO, arg_defaults, dockerfile, instructions, pip_installs, pyproject, substitute

HADOLINT = Path(sys.executable).parent / "hadolint"
# /etc/passwd and /etc/group of the Ubuntu 24.04 base images (ubuntu:24.04 and the nvidia/cuda
# *-ubuntu24.04 images built on it): since 23.04 Ubuntu ships a default user.
UBUNTU_2404_IDS = {"1000": "ubuntu"}


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_finds_nothing(image: str) -> None:
    """Every rule at every severity; the Dockerfile's `# hadolint ignore=` lines say why each exception."""
    path = REPO / "images" / image / "Dockerfile"
    out = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_no_user_or_group_the_base_image_already_has(image: str) -> None:
    """`groupadd --gid 1000` on an Ubuntu 24.04 base fails the build: gid 1000 is `ubuntu`'s."""
    text = dockerfile(image)
    final_base = substitute(instructions(text, "FROM")[-1].split()[0], arg_defaults(text))
    taken = UBUNTU_2404_IDS if "ubuntu24.04" in final_base or final_base.startswith("ubuntu:24.04") else {}
    for run in instructions(text, "RUN"):
        for tool, flag in (("groupadd", "--gid"), ("useradd", "--uid")):
            for command in re.findall(rf"{tool}\b[^&;]*", run):
                ids = re.findall(rf"{flag}[ =](\d+)", command)
                clash = [i for i in ids if i in taken]
                assert not clash, f"{image}: `{command.strip()}` clashes with the base image's {taken[clash[0]]!r}"
    (user,) = instructions(text, "USER")
    uid = user.split(":")[0]
    created = re.search(rf"useradd\b[^&;]*--uid[ =]{uid}\b", " ".join(instructions(text, "RUN")))
    assert uid in taken or created, f"{image}: USER {uid} exists neither in {final_base} nor through useradd"


def test_one_torch_version_everywhere() -> None:
    """pyproject's train extra, the trainer image and `make install` install the same torch."""
    (image_torch,) = [i.pins["torch"] for i in pip_installs("trainer") if "torch" in i.pins]
    (extra,) = [r for r in pyproject()["project"]["optional-dependencies"]["train"] if r.startswith("torch")]
    assert extra == f"torch=={image_torch}"
    makefile = (REPO / "Makefile").read_text()
    assert set(re.findall(r"torch==([\w.+]+)", makefile)) == {image_torch}


def test_image_pins_match_pyproject_pins() -> None:
    """A package pinned both in an image and in pyproject has one version."""
    project = pyproject()["project"]
    declared = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pinned = dict(r.split("==", 1) for r in declared if "==" in r)
    for image in IMAGES:
        for install in pip_installs(image):
            for name, version in install.pins.items():
                assert pinned.get(name, version) == version, f"{image}: {name}=={version}, pyproject: {pinned[name]}"


def test_flash_attn_build_requirements_come_first() -> None:
    """`--no-build-isolation` builds flash-attn in the image's venv: its setup.py imports packaging,
    setuptools (torch brings it), wheel and torch and builds with ninja, so they must be installed first."""
    installs = pip_installs("trainer")
    (at,) = [n for n, i in enumerate(installs) if "flash-attn" in i.pins]
    assert "--no-build-isolation" in installs[at].options
    before = {name for i in installs[:at] for name in i.pins}
    assert {"torch", "packaging", "wheel", "ninja", "psutil"} <= before
