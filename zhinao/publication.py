"""Atomic publication of a stage's output.

A run writes everything under its own generation of the output, `<output>/_gen/<id>/`, where the
id is a digest of the run's fingerprint, so a rerun with the same fingerprint resumes in the same
place. When every rank has finished (each leaves a marker in the generation), rank 0 writes the
manifest `<output>/_published.json` naming the generation: the single write that makes the run
visible. Until then readers (zhinao.artifacts.StageOutput, every stage's inputs) keep reading the
generation published before, so a reader sees the old result or the new one, never a mix.

After publishing, generations other than the new one and the one it replaced are deleted: the
replaced one stays for readers that resolved it just before the switch.
"""

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from zhinao.artifacts import FINGERPRINT, GENERATIONS, LEASE, MANIFEST, StageOutput, generation_key, published_manifest
from zhinao.config.runtime import StageRuntime
from zhinao.fingerprint import digest
from zhinao.storage import ObjectStore, open_store

log = logging.getLogger("zhinao.publication")
RANKS = "_ranks"
"""Inside a generation: one empty marker per rank that has finished writing."""
FINISH_WAIT_SECONDS = 600.0


class PublicationError(RuntimeError):
    """The run cannot be published (a rank never finished, or the stage wrote no summary)."""


@dataclass(frozen=True)
class Staged:
    runtime: StageRuntime
    """The stage's runtime with `output` at the run's generation and every input at what it publishes."""
    fingerprint: dict
    generation: str
    published: bool
    """This very generation is already the published output: the stage has nothing left to do."""


def generation_of(fingerprint: dict) -> str:
    return digest(fingerprint)


def resolve_input(uri: str) -> str:
    """An input's published generation (the URI itself when it was not published through a manifest)."""
    store = open_store(uri)
    manifest = published_manifest(store)
    return store.child(generation_key(manifest["generation"])).uri if manifest else uri


def staged(rt: StageRuntime, fingerprint: dict) -> Staged:
    root = open_store(rt.output)
    generation = generation_of(fingerprint)
    manifest = published_manifest(root)
    runtime = rt.model_copy(
        update={
            "output": root.child(generation_key(generation)).uri,
            "inputs": {name: resolve_input(uri) for name, uri in rt.inputs.items()},
        }
    )
    return Staged(runtime, fingerprint, generation, published=bool(manifest) and manifest["generation"] == generation)


def rank_marker(rank: int) -> str:
    return f"{RANKS}/rank-{rank:05d}"


def finish(
    root: ObjectStore,
    run: Staged,
    *,
    rank: int,
    world_size: int,
    timeout: float = FINISH_WAIT_SECONDS,
    poll: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Mark this rank finished; rank 0 waits for every rank's marker, then publishes the run."""
    gen = root.child(generation_key(run.generation))
    gen.put_bytes(rank_marker(rank), b"")
    if rank != 0:
        return
    deadline = clock() + timeout
    while missing := [r for r in range(world_size) if not gen.exists(rank_marker(r))]:
        if clock() > deadline:
            raise PublicationError(
                f"{root.uri}: ranks {missing} did not finish within {timeout:.0f}s; nothing was published"
            )
        time.sleep(poll)
    publish(root, run.generation, run.fingerprint)


def publish(root: ObjectStore, generation: str, fingerprint: dict) -> None:
    """Make `generation` the output (the manifest is the last write), then drop older generations."""
    gen = root.child(generation_key(generation))
    if not StageOutput(gen).is_finished():
        raise PublicationError(f"{gen.uri}: the stage wrote no summary; nothing was published")
    before = published_manifest(root)
    root.put_bytes(
        MANIFEST,
        json.dumps(
            {"generation": generation, "fingerprint": fingerprint, "published": time.time()}, indent=2, sort_keys=True
        ).encode(),
    )
    log.info("published %s as %s", gen.uri, root.uri)
    keep = {generation} | ({before["generation"]} if before else set())
    prune(root, keep)


def prune(root: ObjectStore, keep: set[str]) -> None:
    """Delete every generation not in `keep`, and files an unpublished (older) layout left at the prefix."""
    reserved = {MANIFEST, FINGERPRINT, LEASE}
    for key in root.list():
        if key in reserved:
            continue
        if key.startswith(f"{GENERATIONS}/") and key.split("/", 2)[1] in keep:
            continue
        root.delete(key)


def writing_store(root: ObjectStore) -> ObjectStore | None:
    """The generation the output's current writer writes (named by its recorded fingerprint): where
    a run's progress shows before it is published. None before any run has started."""
    if not root.exists(FINGERPRINT):
        return None
    return root.child(generation_key(generation_of(json.loads(root.get_bytes(FINGERPRINT)))))
