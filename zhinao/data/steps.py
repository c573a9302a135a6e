"""The two kinds of data-processing step, and shared helpers.

A local step looks at one document and may change its text or drop it. A global step needs the
whole corpus: it `collect`s compact artefacts (hashes) from every document of a pass, `sync`s them
with the other ranks through object storage, then `apply`s its decisions in the next pass.
"""

from importlib import resources
from typing import NamedTuple, Protocol

from zhinao.data.io import Doc


class Drop(NamedTuple):
    step: str
    reason: str


class LocalStep(Protocol):
    names: tuple[str, ...]
    """Cascade rows this step reports, in order (most steps have one)."""

    def __call__(self, doc: Doc) -> Drop | None: ...


class GlobalStep(Protocol):
    names: tuple[str, ...]

    def collect(self, doc: Doc) -> None: ...

    def sync(self, comm) -> None: ...

    def apply(self, doc: Doc) -> Drop | None: ...


def resource_lines(name: str) -> list[str]:
    """Entries of a shipped list in zhinao/data/resources: one per line, '#' starts a comment."""
    text = resources.files("zhinao.data").joinpath("resources", name).read_text(encoding="utf-8")
    return parse_lines(text)


def parse_lines(text: str) -> list[str]:
    return [s for s in (line.split("#", 1)[0].strip() for line in text.splitlines()) if s]
