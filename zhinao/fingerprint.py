"""What produced a stage output: its fingerprint, recorded in the output when a run starts.

The fingerprint is the stage's kind and resolved params (less the layout fields its params model
names, such as longctx's sequenceParallel: like the world size, they only spread the same run over
the ranks, so a rerun with other values resumes), a digest of each input (the recorded
fingerprint of an input another stage produced; the object names and sizes of any other input),
and the code version. A rerun with the same fingerprint resumes; a different one is refused with
the fields that differ, unless the user asked to overwrite the output. The fingerprint also names
the generation a run writes (zhinao.publication).
"""

import hashlib
import json
from typing import Any

import zhinao
from zhinao.artifacts import FINGERPRINT, GENERATIONS, LEASE, generation_key, published_manifest
from zhinao.config.kinds import STAGE_KINDS
from zhinao.config.runtime import StageRuntime
from zhinao.storage import ObjectStore, open_store

FINGERPRINT_KEY = FINGERPRINT


class OutputMismatch(RuntimeError):
    """The output was written by a run with a different fingerprint."""


def digest(obj: Any) -> str:
    """A short, stable name of a JSON value (a fingerprint's names its generation)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def inputdigest(store: ObjectStore) -> str:
    """The fingerprint of what an upstream stage published (while a rerun rewrites it, the old one
    is still what a reader gets), else its recorded fingerprint, else its object names and sizes."""
    manifest = published_manifest(store)
    if manifest is not None:
        return digest(manifest["fingerprint"])
    if store.exists(FINGERPRINT_KEY):
        return digest(json.loads(store.get_bytes(FINGERPRINT_KEY)))
    return digest(sorted(store.sizes().items()))


def without_layout(kind: str, params: dict) -> dict:
    """`params` less the layout fields of the kind's params model (by their wire or Python name)."""
    model = next((k.params for k in STAGE_KINDS if k.kind == kind), None)
    if model is None:
        return params
    names = {n for f in model.LAYOUT_FIELDS for n in (f, model.model_fields[f].alias)}
    return {k: v for k, v in params.items() if k not in names}


def stage_fingerprint(rt: StageRuntime) -> dict:
    return {
        "kind": rt.kind,
        "params": without_layout(rt.kind, rt.params),
        "inputs": {name: inputdigest(open_store(uri)) for name, uri in sorted(rt.inputs.items())},
        "code": zhinao.__version__,
    }


def differences(recorded: Any, current: Any, path: str = "") -> list[str]:
    """`field.path: old -> new` for each field that differs (inputs: `changed`)."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(recorded) | set(current), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in recorded:
                out.append(f"{sub}: added ({json.dumps(current[key])})")
            elif key not in current:
                out.append(f"{sub}: removed (was {json.dumps(recorded[key])})")
            else:
                out += differences(recorded[key], current[key], sub)
        return out
    if recorded == current:
        return []
    if path.startswith("inputs."):
        return [f"{path}: changed"]
    return [f"{path}: {json.dumps(recorded)} -> {json.dumps(current)}"]


def check_or_record(store: ObjectStore, fingerprint: dict, *, overwrite: bool) -> str:
    """Record the fingerprint in a new output; accept the same one (a resume); refuse a different
    one with the differing fields -- or, with `overwrite`, record the new one and drop the
    generations other runs left unpublished. What is published stays readable until the new run
    publishes (zhinao.publication). Returns what happened: new, resume or overwritten."""
    recorded = json.loads(store.get_bytes(FINGERPRINT_KEY)) if store.exists(FINGERPRINT_KEY) else None
    if recorded == fingerprint:
        return "resume"
    leftovers = [k for k in store.list() if k != LEASE]
    if leftovers and not overwrite:
        why = (
            "; ".join(differences(recorded, fingerprint))
            if recorded is not None
            else f"it holds {len(leftovers)} objects of a run that recorded no fingerprint"
        )
        raise OutputMismatch(
            f"{store.uri} was written by a different run: {why}. Resuming would mix the two: "
            "rerun with --overwrite STAGE to replace it, or give the stage another output"
        )
    manifest = published_manifest(store)
    live = generation_key(manifest["generation"]) + "/" if manifest else None
    for key in leftovers:
        if key.startswith(f"{GENERATIONS}/") and not (live and key.startswith(live)):
            store.delete(key)
    store.put_bytes(FINGERPRINT_KEY, json.dumps(fingerprint, sort_keys=True, indent=2).encode())
    return "overwritten" if leftovers else "new"
