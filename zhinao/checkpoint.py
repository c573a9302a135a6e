"""Checkpoints in an object store: named part files, a manifest of sha256 sums, a `latest` pointer.

Layout under the store (prefix "checkpoints" by default):

    checkpoints/step-00000010/<part files>       uploaded by every rank for its own parts
    checkpoints/step-00000010/manifest.json      {"step", "parts": {name: sha256}, "meta", "created"}
    checkpoints/latest                           "step-00000010"

Commit order makes a checkpoint all-or-nothing: parts first, then the manifest (its presence is
what "committed" means), then the `latest` pointer, then pruning of old checkpoints. A crash or a
storage outage at any point leaves the previous committed checkpoint as the one `load_latest`
finds. Loading verifies every part's sha256 and falls back to older committed checkpoints,
warning, past anything corrupt or incomplete; it never deletes what it skips.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from zhinao.storage import ObjectNotFound, ObjectStore, StorageError, check_key

log = logging.getLogger("zhinao.checkpoint")

MANIFEST = "manifest.json"
LATEST = "latest"
_STEP_RE = re.compile(r"^step-(\d{8,})$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be committed or its manifest is invalid."""


# -- pure helpers ------------------------------------------------------------------------------


def step_name(step: int) -> str:
    """The directory name of a step: step-00000010 (zero-padded so names sort like numbers)."""
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
    return f"step-{step:08d}"


def parse_step_name(name: str) -> int | None:
    """step-00000010 -> 10; anything else -> None."""
    m = _STEP_RE.match(name.strip())
    return int(m.group(1)) if m else None


def steps_to_prune(committed: Iterable[int], keep: int, protect: int | None = None) -> list[int]:
    """Which committed steps to delete so that the `keep` newest remain; `protect` (the step just
    committed) is never chosen. Ascending."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    newest_first = sorted(set(committed), reverse=True)
    kept = set(newest_first[:keep])
    if protect is not None:
        kept.add(protect)
    return sorted(s for s in newest_first if s not in kept)


def load_order(committed: Iterable[int], pointer: int | None) -> list[int]:
    """Steps to try when loading, newest first: every committed step, plus the one `latest`
    points to even if it lacks a manifest (so that the gap gets reported)."""
    steps = set(committed)
    if pointer is not None:
        steps.add(pointer)
    return sorted(steps, reverse=True)


def build_manifest(step: int, parts: dict[str, str], meta: dict | None = None, created: datetime | None = None) -> dict:
    created = created or datetime.now(timezone.utc)
    return {
        "step": step,
        "parts": dict(sorted(parts.items())),
        "meta": dict(meta or {}),
        "created": created.isoformat(timespec="seconds"),
    }


def parse_manifest(raw: bytes, step: int) -> dict:
    """Validate a manifest read back from storage; raises CheckpointError saying what is wrong."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"manifest is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise CheckpointError("manifest is not a JSON object")
    if doc.get("step") != step:
        raise CheckpointError(f"manifest says step {doc.get('step')!r}, expected {step}")
    parts = doc.get("parts")
    if not isinstance(parts, dict) or not parts:
        raise CheckpointError("manifest lists no parts")
    for name, digest in parts.items():
        try:
            _check_part_name(name)
        except ValueError as exc:
            raise CheckpointError(f"manifest part name {name!r} is invalid") from exc
        if not isinstance(digest, str) or not _SHA_RE.match(digest):
            raise CheckpointError(f"manifest sha256 of part {name!r} is malformed: {digest!r}")
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise CheckpointError("manifest meta is not an object")
    return doc


def _check_part_name(name: str) -> str:
    check_key(name)
    if name == MANIFEST:
        raise ValueError(f"part name {MANIFEST!r} is reserved")
    return name


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# -- manager -----------------------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    step: int
    dir: Path
    """Local directory the parts were downloaded into (workdir/step-XXXXXXXX)."""
    meta: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Path] = field(default_factory=dict)
    """Part name -> local file, every one verified against the manifest's sha256."""


class _Skip(Exception):
    """This checkpoint is unusable; the message says why."""


class CheckpointManager:
    def __init__(self, store: ObjectStore, *, prefix: str = "checkpoints", keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.store = store
        self.prefix = check_key(prefix.strip("/"))
        self.keep = keep

    # keys
    def _dir_key(self, step: int) -> str:
        return f"{self.prefix}/{step_name(step)}/"

    def _part_key(self, step: int, name: str) -> str:
        return self._dir_key(step) + name

    @property
    def _latest_key(self) -> str:
        return f"{self.prefix}/{LATEST}"

    def url(self, step: int) -> str:
        return self.store.url(self._dir_key(step).rstrip("/"))

    def get_part(self, step: int, name: str, dest: Path) -> Path:
        """Download one part of a committed checkpoint without verifying the rest (evaluation reads)."""
        self.store.get_file(self._part_key(step, name), dest)
        return dest

    # writing
    def upload_parts(self, step: int, files: dict[str, Path]) -> dict[str, str]:
        """Upload this rank's part files for `step`; returns {name: sha256} for `commit`."""
        sums: dict[str, str] = {}
        for name, path in files.items():
            _check_part_name(name)
            sums[name] = sha256_file(path)
            self.store.put_file(self._part_key(step, name), path)
        return sums

    def commit(self, step: int, parts: dict[str, str], meta: dict | None = None) -> None:
        """Rank 0, after every rank's upload_parts returned: check the parts are all there, write
        the manifest, then the `latest` pointer, then prune old checkpoints."""
        if not parts:
            raise CheckpointError(f"cannot commit checkpoint {step_name(step)}: no parts")
        for name, digest in parts.items():
            _check_part_name(name)
            if not _SHA_RE.match(digest):
                raise CheckpointError(f"cannot commit checkpoint {step_name(step)}: bad sha256 for part {name!r}")
        present = {k[len(self._dir_key(step)) :] for k in self.store.list(self._dir_key(step))}
        missing = sorted(set(parts) - present)
        if missing:
            raise CheckpointError(
                f"cannot commit checkpoint {self.url(step)}: parts not in storage: {', '.join(missing)}"
            )
        manifest = build_manifest(step, parts, meta)
        self.store.put_bytes(self._part_key(step, MANIFEST), json.dumps(manifest, indent=2).encode())
        self.store.put_bytes(self._latest_key, step_name(step).encode())
        log.info("committed checkpoint %s (%d parts)", self.url(step), len(parts))
        self.prune(protect=step)

    def prune(self, protect: int | None = None) -> list[int]:
        """Delete committed checkpoints beyond the `keep` newest (never `protect`), and incomplete
        step directories older than the newest committed one (leftovers of failed uploads).
        Returns the committed steps deleted."""
        committed, all_steps = self._scan()
        doomed = steps_to_prune(committed, self.keep, protect)
        for s in doomed:
            # Manifest first: a half-deleted checkpoint must not look committed.
            self.store.delete(self._part_key(s, MANIFEST))
            self.store.delete_prefix(self._dir_key(s))
            log.info("pruned checkpoint %s", self.url(s))
        if committed:
            newest = max(committed)
            for s in sorted(all_steps - set(committed)):
                if s < newest:
                    self.store.delete_prefix(self._dir_key(s))
                    log.info("removed incomplete checkpoint %s (no manifest)", self.url(s))
        return doomed

    # reading
    def _scan(self) -> tuple[list[int], set[int]]:
        """(committed steps ascending, every step that has a directory)."""
        committed: set[int] = set()
        all_steps: set[int] = set()
        for key in self.store.list(self.prefix + "/"):
            parts = key[len(self.prefix) + 1 :].split("/", 1)
            step = parse_step_name(parts[0])
            if step is None or len(parts) < 2:
                continue
            all_steps.add(step)
            if parts[1] == MANIFEST:
                committed.add(step)
        return sorted(committed), all_steps

    def committed_steps(self) -> list[int]:
        """Steps that have a manifest, ascending (whether or not their parts are intact)."""
        return self._scan()[0]

    def latest_pointer(self) -> int | None:
        """The step `latest` names, or None if it is missing or unreadable."""
        try:
            raw = self.store.get_bytes(self._latest_key)
        except ObjectNotFound:
            return None
        step = parse_step_name(raw.decode("utf-8", "replace"))
        if step is None:
            log.warning(
                "checkpoint pointer %s is unreadable (%r); ignoring it", self.store.url(self._latest_key), raw[:64]
            )
        return step

    def load_latest(self, workdir: Path, *, select: Callable[[str], bool] | None = None) -> LoadedCheckpoint | None:
        """Download and verify the newest valid committed checkpoint into workdir/step-XXXXXXXX/.

        `select`, if given, limits which parts are downloaded (e.g. only this rank's); the others
        stay listed in the manifest but unverified. Returns None when no valid checkpoint exists.
        Storage failures other than a missing object propagate (an outage must not look like
        "no checkpoint, start from scratch")."""
        workdir = Path(workdir)
        pointer = self.latest_pointer()
        committed = self.committed_steps()
        for step in load_order(committed, pointer):
            try:
                if step not in committed:
                    raise _Skip("the latest pointer names it but it has no manifest")
                return self._load(step, workdir, select)
            except _Skip as why:
                log.warning("skipping checkpoint %s: %s; falling back to an older one", self.url(step), why)
                shutil.rmtree(workdir / step_name(step), ignore_errors=True)
        return None

    def _load(self, step: int, workdir: Path, select: Callable[[str], bool] | None) -> LoadedCheckpoint:
        try:
            raw = self.store.get_bytes(self._part_key(step, MANIFEST))
        except ObjectNotFound as exc:
            raise _Skip("its manifest disappeared") from exc
        try:
            manifest = parse_manifest(raw, step)
        except CheckpointError as exc:
            raise _Skip(f"unreadable manifest: {exc}") from exc
        local = workdir / step_name(step)
        parts: dict[str, Path] = {}
        for name, expected in manifest["parts"].items():
            if select is not None and not select(name):
                continue
            dest = local / name
            if not (dest.is_file() and sha256_file(dest) == expected):
                try:
                    self.store.get_file(self._part_key(step, name), dest)
                except ObjectNotFound as exc:
                    raise _Skip(f"part {name!r} is missing") from exc
                actual = sha256_file(dest)
                if actual != expected:
                    raise _Skip(f"part {name!r} is corrupt (sha256 {actual[:12]}…, manifest says {expected[:12]}…)")
            parts[name] = dest
        log.info("loaded checkpoint %s into %s", self.url(step), local)
        return LoadedCheckpoint(step=step, dir=local, meta=manifest.get("meta", {}), parts=parts)


__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "LoadedCheckpoint",
    "StorageError",
    "build_manifest",
    "load_order",
    "parse_manifest",
    "parse_step_name",
    "sha256_file",
    "step_name",
    "steps_to_prune",
]
