"""Turn pydantic validation errors into one readable line per problem, with a field path."""

from pydantic import ValidationError

from zhinao.config._base import FieldErrors
from zhinao_k8s.api.rules import PATTERN_REASONS

_YAML_TYPES = {
    bool: "a boolean",
    str: "a string",
    int: "an integer",
    float: "a number",
    dict: "a mapping",
    list: "a list",
}


def _path(loc: tuple, tags: frozenset[str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in tags or str(part).startswith("function-"):
            continue  # discriminator tags and validator names are not part of the user's document
        else:
            out += f".{part}" if out else str(part)
    return out


def _join(path: str, relative: str) -> str:
    if not path or not relative:
        return path or relative
    return path + relative if relative.startswith("[") else f"{path}.{relative}"


def _given(value: object) -> str:
    if value is None:
        return "null"
    return _YAML_TYPES.get(type(value), type(value).__name__)


def _reason(err: dict) -> str:
    ctx = err.get("ctx") or {}
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {op} {bound}"
    if kind == "union_tag_invalid":
        return f"unknown kind {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return "required field 'kind' is missing"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in PATTERN_REASONS:
        return PATTERN_REASONS[ctx["pattern"]]
    msg = err["msg"]
    msg = msg[0].lower() + msg[1:]
    if kind.endswith("_type") and kind != "model_type":
        return f"{msg}, not {_given(err.get('input'))}"  # strict: `replicas: true` is no number
    return msg


def format_errors(exc: ValidationError, stage_kinds: tuple[str, ...] = ()) -> list[str]:
    """`stages[2].replicas: must be >= 1`, one string per error, in document order."""
    tags = frozenset(stage_kinds)
    lines = []
    for err in exc.errors(include_url=False):
        path = _path(err["loc"], tags)
        error = (err.get("ctx") or {}).get("error")
        if err["type"] == "value_error" and isinstance(error, FieldErrors):
            lines += [f"{_join(path, rel)}: {reason}" if _join(path, rel) else reason for rel, reason in error.problems]
            continue
        lines.append(f"{path}: {_reason(err)}" if path else _reason(err))
    return lines
