"""Read documents from a corpus prefix in object storage (the data stage's output or raw JSONL).

Bad lines are counted and skipped here: the data stage is where they are kept as rejects.
"""

import gzip
import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from zhinao.storage import ObjectStore

log = logging.getLogger(__name__)
SUFFIXES = (".jsonl", ".jsonl.gz")


@dataclass
class Document:
    text: str
    source: str


def corpus_keys(store: ObjectStore) -> list[str]:
    """`docs/*` when the prefix is a data-stage output, else every JSONL file under it."""
    keys = [k for k in store.list("docs/") if k.endswith(SUFFIXES)]
    return keys or [k for k in store.list() if k.endswith(SUFFIXES) and not k.startswith("rejects/")]


def jsonl_lines(store: ObjectStore, keys: list[str]) -> Iterator[tuple[str, int, bytes]]:
    """(key, line number, line) of every non-blank line of the JSONL files, gzip by suffix: the one
    reader under the document, alignment-data, ablation and benchmark-task readers."""
    for key in keys:
        raw = store.get_bytes(key)
        if key.endswith(".gz"):
            raw = gzip.decompress(raw)
        for number, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                yield key, number, line


def lines_of_rank(
    store: ObjectStore, keys: list[str], *, rank: int, world_size: int
) -> Iterator[tuple[str, int, bytes]]:
    """Rank r of W's share of the lines of `keys`: the files r, r+W, ..., or, when there are fewer
    files than ranks, every W-th line of all of them. Every line goes to exactly one rank."""
    keys = sorted(keys)
    if len(keys) >= world_size:
        return jsonl_lines(store, keys[rank::world_size])
    return itertools.islice(jsonl_lines(store, keys), rank, None, world_size)


def read_documents(
    store: ObjectStore,
    *,
    text_field: str = "text",
    source_field: str = "source",
    keys: list[str] | None = None,
    lines: Iterator[tuple[str, int, bytes]] | None = None,
) -> Iterator[Document]:
    """The documents of `lines` (default: every line of `keys`, default every corpus file)."""
    bad = 0
    if lines is None:
        lines = jsonl_lines(store, keys if keys is not None else corpus_keys(store))
    for _key, _number, line in lines:
        try:
            doc = json.loads(line)
            text = doc[text_field]
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        if isinstance(text, str) and text:
            yield Document(text, str(doc.get(source_field) or "default"))
    if bad:
        log.warning("skipped %d unreadable lines in %s (run the data stage to keep them as rejects)", bad, store.uri)
