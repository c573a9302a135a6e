"""Read a TrainingPipeline (or another zhinao.ai document) from YAML or JSON text and validate it.

A spec file is untrusted input: its size, nesting and alias expansion are capped before anything is
built from it, so a hostile file costs milliseconds and one line, never minutes and gigabytes.
"""

import re
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from zhinao_k8s.api.errors import format_errors
from zhinao_k8s.api.v1alpha1 import STAGE_KINDS, TrainingPipeline

MAX_SPEC_BYTES = 256 * 1024
"""Kubernetes caps an object's annotations at 256 KiB, and `kubectl apply` stores the whole object in one."""
MAX_DEPTH = 32
"""The deepest real spec nests about 8 levels."""
MAX_NODES = 50_000
"""Values after alias expansion (an alias counts as a copy of what it names); real specs have a few hundred."""


class SpecError(ValueError):
    """A spec that cannot be used; `problems` holds one `path: reason` line each."""

    def __init__(self, source: str, problems: list[str], what: str = "spec"):
        self.source = source
        self.problems = problems
        self.what = what
        """What the file is meant to be (`spec`, `Secret file`), for the headline of the error."""
        super().__init__(f"{source}: " + "; ".join(problems))


M = TypeVar("M", bound=BaseModel)


def decode_text(data: bytes, source: str, what: str = "spec") -> str:
    """UTF-8 text of a file, or a SpecError saying why it is none (binary, another encoding, too big)."""
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(source, [f"file is {len(data):,} bytes; a {what} may be at most {MAX_SPEC_BYTES:,} (256 KiB)"])
    if (nul := data.find(b"\0")) >= 0:
        raise SpecError(source, [f"binary file (NUL byte at offset {nul}), not a YAML {what}"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(
            source, [f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"]
        ) from None


def _check_depth(text: str) -> None:
    """Nesting measured on the parser's events (no recursion), before the recursive composer runs."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ValueError(f"line {event.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """PyYAML's safe loader (libyaml's parser where installed: 50x faster on hostile input) with
    YAML 1.2's numbers: `1e-4` is a float, as for the API server and JSON (PyYAML follows YAML 1.1,
    where a float needs a dot, and would read a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Measure:
    """Walks the composed node graph once (shared nodes are measured once): expanded size, depth
    through aliases, recursive aliases and duplicate keys, which PyYAML would silently let win."""

    def __init__(self) -> None:
        self.memo: dict[int, tuple[int, int]] = {}
        self.active: set[int] = set()

    def size(self, node: yaml.Node, depth: int = 0, path: str = "") -> int:
        key = id(node)
        if key in self.active:
            raise ValueError(f"{path or 'document'}: an alias refers to a value that contains it")
        if key not in self.memo:
            self.active.add(key)
            self.memo[key] = self._measure(node, depth, path)
            self.active.discard(key)
        size, height = self.memo[key]
        if depth + height > MAX_DEPTH:
            raise ValueError(f"{path or 'document'}: nested deeper than {MAX_DEPTH} levels (through aliases)")
        return size

    def _measure(self, node: yaml.Node, depth: int, path: str) -> tuple[int, int]:
        children: list[tuple[yaml.Node, str]] = []
        if isinstance(node, yaml.SequenceNode):
            children = [(child, f"{path}[{i}]") for i, child in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, v in node.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else "?"
                here = f"{path}.{name}" if path else name
                if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                    if k.value in first:
                        raise ValueError(
                            f"{here}: duplicate key (lines {first[k.value]} and {k.start_mark.line + 1}); "
                            "YAML would silently keep the last"
                        )
                    first[k.value] = k.start_mark.line + 1
                children += [(k, here), (v, here)]
        size, height = 1, 0
        for child, where in children:
            size += self.size(child, depth + 1, where)
            height = max(height, 1 + self.memo[id(child)][1])
            if size > MAX_NODES:
                raise ValueError(f"{path or 'document'}: aliases expand to more than {MAX_NODES:,} values")
        return size, height


def load_yaml_documents(text: str, source: str, what: str = "spec", *, single: bool = False) -> list:
    """The YAML (or JSON) documents of `text`, size, depth and aliases checked; every failure a
    SpecError line. `single`: more than one document is an error."""
    if len(text.encode("utf-8", errors="surrogatepass")) > MAX_SPEC_BYTES:
        raise SpecError(source, [f"text is more than {MAX_SPEC_BYTES:,} bytes (256 KiB), the most a {what} may be"])
    loader = None
    try:
        _check_depth(text)
        loader = _Loader(text)
        nodes = [loader.get_single_node()] if single else []
        while not single and loader.check_node():
            nodes.append(loader.get_node())
        measure = _Measure()
        for node in nodes:
            if node is not None:
                measure.size(node)
        return [loader.construct_document(node) if node is not None else None for node in nodes]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "document"
        raise SpecError(source, [f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})"]) from None
    except ValueError as exc:
        raise SpecError(source, [str(exc)]) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(text: str, source: str, what: str = "spec") -> object:
    """The one YAML document of `text` (see `load_yaml_documents`)."""
    return load_yaml_documents(text, source, what, single=True)[0]


def validate_document(model: type[M], doc: object, source: str = "<spec>", stage_kinds: tuple[str, ...] = ()) -> M:
    """`doc` validated as `model` with the API server's types: `replicas: true` or `"4"` is no integer."""
    if not isinstance(doc, dict):
        raise SpecError(source, ["document must be a mapping with apiVersion, kind, metadata and spec"])
    try:
        return model.model_validate(doc, strict=True)
    except ValidationError as exc:
        raise SpecError(source, format_errors(exc, stage_kinds)) from None


def parse_document(model: type[M], text: str, source: str = "<spec>", stage_kinds: tuple[str, ...] = ()) -> M:
    """A YAML or JSON document validated as `model`; every problem a `SpecError` line."""
    return validate_document(model, load_yaml(text, source), source, stage_kinds)


def read_spec_file(path: str | Path, what: str = "spec") -> str:
    """The text of a spec (or Secret) file, refused with one line when it is unreadable, too big or not text."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(
                str(path),
                [f"file is {path.stat().st_size:,} bytes; a {what} may be at most {MAX_SPEC_BYTES:,} (256 KiB)"],
            )
        with path.open("rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(str(path), [f"cannot read file ({exc.strerror or exc})"]) from None
    return decode_text(data, str(path), what)


def load_document(model: type[M], path: str | Path, stage_kinds: tuple[str, ...] = ()) -> M:
    return parse_document(model, read_spec_file(path), str(path), stage_kinds)


def parse_pipeline(text: str, source: str = "<spec>") -> TrainingPipeline:
    return parse_document(TrainingPipeline, text, source, STAGE_KINDS)


def load_pipeline(path: str | Path) -> TrainingPipeline:
    return load_document(TrainingPipeline, path, STAGE_KINDS)
