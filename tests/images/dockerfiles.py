"""Read images/*/Dockerfile as `docker build` would: continuation lines joined, ARG defaults substituted,
and the requirements every `pip install` names, so tests can check them without a Docker engine."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("trainer", "operator")
# pip options that take a value: the value is not a requirement.
PIP_VALUE_OPTIONS = {"--index-url", "-i", "--extra-index-url", "-c", "--constraint", "-r", "--requirement"}


def dockerfile(image: str) -> str:
    return (REPO / "images" / image / "Dockerfile").read_text()


def instructions(text: str, keyword: str) -> list[str]:
    """The arguments of every `keyword` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.split(None, 1)[:1] == [keyword]]


def arg_defaults(text: str) -> dict[str, str]:
    return dict(a.split("=", 1) for a in instructions(text, "ARG") if "=" in a)


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


@dataclass(frozen=True)
class PipInstall:
    """One `pip install` command of a RUN line."""

    requirements: list[str]
    """As written, ARGs substituted; `.[extra,...]` is the project itself."""

    options: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    """`NAME=value` prefixes of the command (MAX_JOBS, DS_BUILD_OPS, ...)."""

    @property
    def project_extras(self) -> list[str]:
        return [e for r in self.requirements if r.startswith(".[") for e in r[2:-1].split(",")]

    @property
    def pins(self) -> dict[str, str]:
        """`name==version` requirements by name."""
        return dict(r.split("==", 1) for r in self.requirements if "==" in r)


def pip_installs(image: str) -> list[PipInstall]:
    """Every `pip install` of the image's RUN lines, in build order."""
    text = dockerfile(image)
    args = arg_defaults(text)
    installs = []
    for run in instructions(text, "RUN"):
        for command in substitute(run, args).split("&&"):
            words = shlex.split(command)
            if "pip" not in words or words[words.index("pip") + 1 : words.index("pip") + 2] != ["install"]:
                continue
            at = words.index("pip")
            env = dict(w.split("=", 1) for w in words[:at] if "=" in w)
            requirements, options, rest = [], [], iter(words[at + 2 :])
            for word in rest:
                if word.startswith("-"):
                    options += [word, next(rest)] if word in PIP_VALUE_OPTIONS else [word]
                else:
                    requirements.append(word)
            installs.append(PipInstall(requirements, options, env))
    return installs


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())
