"""Kubernetes Secret manifests given to the local runner (`zhinao-k8s run --secret FILE`).

Every problem names the file, the document and the key, never a value: a Secret's values are
credentials, and an error line ends up in terminals and CI logs.
"""

import base64
import binascii
from pathlib import Path

from zhinao_k8s.api.load import SpecError, load_yaml_documents, read_spec_file


def _strings(mapping: object, where: str, problems: list[str]) -> dict[str, str]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        problems.append(f"{where}: must be a mapping of key: value")
        return {}
    out = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str):
            problems.append(f"{where}.{key}: the value must be a string")
        else:
            out[key] = value
    return out


def _decode(data: dict[str, str], where: str, problems: list[str]) -> dict[str, str]:
    out = {}
    for key, value in data.items():
        try:
            out[key] = base64.b64decode(value, validate=True).decode("utf-8")
        except UnicodeDecodeError:  # before ValueError, its base class
            problems.append(f"{where}.{key}: decodes to bytes that are not UTF-8 text")
        except (binascii.Error, ValueError):
            problems.append(f"{where}.{key}: not valid base64 (put plain text under stringData instead)")
    return out


def parse_secret_text(text: str, source: str) -> dict[str, dict[str, str]]:
    """The Secrets of one manifest file: {name: {key: value}}; other kinds of documents are skipped."""
    secrets: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for i, doc in enumerate(load_yaml_documents(text, source, "Secret file")):
        if doc is None:
            continue
        where = f"document {i + 1}"
        if not isinstance(doc, dict):
            problems.append(f"{where}: must be a mapping (a Secret manifest), not a {type(doc).__name__}")
            continue
        if doc.get("kind") != "Secret":
            continue
        name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: metadata.name: required field is missing")
            continue
        values = _decode(
            _strings(doc.get("data"), f"{where} (Secret {name}) data", problems),
            f"{where} (Secret {name}) data",
            problems,
        )
        values.update(_strings(doc.get("stringData"), f"{where} (Secret {name}) stringData", problems))
        secrets[name] = values
    if problems:
        raise SpecError(source, problems, "Secret file")
    if not secrets:
        raise SpecError(source, ["holds no document of kind Secret"], "Secret file")
    return secrets


def load_secrets(paths: list[Path]) -> dict[str, dict[str, str]]:
    """Secret manifests (data base64 or stringData) -> {name: {key: value}}, later files win."""
    secrets: dict[str, dict[str, str]] = {}
    for path in paths:
        try:
            secrets.update(parse_secret_text(read_spec_file(path, "Secret file"), str(path)))
        except SpecError as exc:
            exc.what = "Secret file"
            raise
    return secrets
