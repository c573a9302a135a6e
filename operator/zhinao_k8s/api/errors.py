"""Turn pydantic validation errors into one readable line per problem, with a field path."""

from pydantic import ValidationError


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
    msg = err["msg"]
    return msg[0].lower() + msg[1:]


def format_errors(exc: ValidationError, stage_kinds: tuple[str, ...] = ()) -> list[str]:
    """`stages[2].replicas: must be >= 1`, one string per error, in document order."""
    tags = frozenset(stage_kinds)
    lines = []
    for err in exc.errors(include_url=False):
        path = _path(err["loc"], tags)
        lines.append(f"{path}: {_reason(err)}" if path else _reason(err))
    return lines
