"""The layout of a stage's output prefix, owned here and nowhere else.

A run writes under a generation of the output (`_gen/<id>/`, named after its fingerprint) and makes
it visible by writing `_published.json` last (zhinao.publication): a reader never sees a mix of an
old and a new run's files, and an output being rewritten keeps serving the old result until then.
Readers go through `StageOutput`, which resolves the published generation; the layout inside one
generation is:

    <output>/summary.json                 what the stage reports; its presence means "finished"
    <output>/metrics/rank-R.jsonl         every rank's step and event records (zhinao.metrics)
    <output>/checkpoints/                 resumable training state (zhinao.checkpoint)
    <output>/hf/                          the Hugging Face export the next stage loads
    <output>/tokenizer/                   the tokenizer stage's HF tokenizer files
    <output>/tokens/index.json + shards   packed token sequences (pretrain, longctx; docs/data.md)
    <output>/records/<set>/index.json + shards  prepared alignment data (sft, reward, rlhf; docs/data.md)
    <output>/report/                      plots and markdown that go into the run's REPORT.md

and next to the generations, at the output prefix itself:

    <output>/_published.json              the manifest: which generation is the output (written last)
    <output>/_gen/<id>/                   one run's files, as above
    <output>/_fingerprint.json            what the current writer runs (zhinao.fingerprint), recorded at start
    <output>/_lease.json                  the single writer's lease while a run writes (zhinao.lease)

A prefix without `_published.json` is read as one generation (a model uploaded by hand, an output
of an earlier release). A prefix without `hf/config.json` that holds `config.json` itself is accepted as an export too
(a model uploaded by hand), and so is a tokenizer prefix without `tokenizer/`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from zhinao.checkpoint import CheckpointManager
from zhinao.data.record_shards import RecordIndex
from zhinao.data.token_shards import TokenIndex
from zhinao.storage import ObjectStore, open_store

SUMMARY = "summary.json"
METRICS = "metrics"
CHECKPOINTS = "checkpoints"
HF = "hf"
TOKENIZER = "tokenizer"
TOKENS = "tokens"
TOKENS_INDEX = f"{TOKENS}/index.json"
TOKENS_PARTS = f"{TOKENS}/parts"
TOKENS_PIECES = f"{TOKENS}/pieces"
RECORDS = "records"
REPORT = "report"
FINGERPRINT = "_fingerprint.json"
LEASE = "_lease.json"
MANIFEST = "_published.json"
GENERATIONS = "_gen"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
"""The files of an HF export that make up its tokenizer (the rest is weights and config)."""


def metrics_key(rank: int) -> str:
    """A rank's metrics log, relative to the output prefix (and to a replica's local workdir)."""
    return f"{METRICS}/rank-{rank}.jsonl"


def step_records(records: list[dict]) -> list[dict]:
    """The optimizer-step records of a metrics log (the rest are events such as checkpoints)."""
    return [r for r in records if r.get("event", "step") == "step"]


@dataclass(frozen=True)
class HFExport:
    model_dir: Path
    """Weights, config and tokenizer files: what from_pretrained loads."""
    tokenizer_dir: Path
    """The tokenizer files only (re-exported with the next stage's model)."""


def published_manifest(store: ObjectStore) -> dict | None:
    """The output's publication manifest, or None when nothing was published through one."""
    return json.loads(store.get_bytes(MANIFEST)) if store.exists(MANIFEST) else None


def generation_key(generation: str) -> str:
    return f"{GENERATIONS}/{generation}"


def published_store(store: ObjectStore) -> ObjectStore:
    """The generation an output publishes (the prefix itself when it has no manifest)."""
    manifest = published_manifest(store)
    return store.child(generation_key(manifest["generation"])) if manifest else store


class StageOutput:
    """One stage's output prefix: read and write its parts by meaning, never by key.

    Given an output's prefix it reads the published generation; a writer is given its generation's
    prefix itself (zhinao.publication), which holds no manifest."""

    def __init__(self, store: ObjectStore):
        self.store = published_store(store)

    @classmethod
    def at(cls, uri: str) -> "StageOutput":
        return cls(open_store(uri))

    @property
    def uri(self) -> str:
        return self.store.uri

    # -- summary
    def is_finished(self) -> bool:
        """A stage writes its summary last in its generation, which is published only after it: its
        presence means the stage finished."""
        return self.store.exists(SUMMARY)

    def read_summary(self) -> dict:
        return json.loads(self.store.get_bytes(SUMMARY))

    def write_summary(self, summary: dict) -> None:
        self.store.put_bytes(SUMMARY, json.dumps(summary, indent=2).encode())

    # -- metrics log
    @property
    def metrics_url(self) -> str:
        return self.store.url(METRICS)

    def has_metrics(self, rank: int = 0) -> bool:
        return self.store.exists(metrics_key(rank))

    def metrics_lines(self, rank: int = 0) -> list[str]:
        """The raw lines of a rank's log ([] when it has none yet)."""
        key = metrics_key(rank)
        return self.store.get_bytes(key).decode().splitlines() if self.store.exists(key) else []

    def metrics_records(self, rank: int = 0) -> list[dict]:
        return [json.loads(line) for line in self.metrics_lines(rank) if line.strip()]

    def step_records(self, rank: int = 0) -> list[dict]:
        return step_records(self.metrics_records(rank))

    def put_metrics(self, rank: int, path: Path) -> None:
        self.store.put_file(metrics_key(rank), path)

    # -- checkpoints
    @property
    def checkpoints_url(self) -> str:
        return self.store.url(CHECKPOINTS)

    def checkpoints(self, *, keep: int = 10**9) -> CheckpointManager:
        return CheckpointManager(self.store, prefix=CHECKPOINTS, keep=keep)

    # -- Hugging Face export
    @property
    def hf_url(self) -> str:
        return self.store.url(HF)

    def put_hf(self, local_dir: Path) -> str:
        """Upload every file of a save_pretrained directory; returns the export's URL."""
        for path in sorted(local_dir.iterdir()):
            self.store.put_file(f"{HF}/{path.name}", path)
        return self.hf_url

    def fetch_hf(self, dest: Path) -> HFExport:
        """Download the export (hf/, or the prefix itself when it holds config.json) under `dest`."""
        prefix = f"{HF}/" if self.store.exists(f"{HF}/config.json") else ""
        if not self.store.exists(prefix + "config.json"):
            raise SystemExit(f"{self.uri} holds no Hugging Face export (expected {HF}/config.json)")
        export = HFExport(dest / "model", dest / "tokenizer")
        export.model_dir.mkdir(parents=True, exist_ok=True)
        export.tokenizer_dir.mkdir(parents=True, exist_ok=True)
        for key in self.store.list(prefix):
            name = key[len(prefix) :]
            if "/" not in name:
                self.store.get_file(key, export.model_dir / name)
                if name in TOKENIZER_FILES:
                    (export.tokenizer_dir / name).write_bytes((export.model_dir / name).read_bytes())
        return export

    # -- tokenizer
    @property
    def tokenizer_url(self) -> str:
        return self.store.url(TOKENIZER)

    def has_tokenizer(self) -> bool:
        return self.store.exists(f"{TOKENIZER}/tokenizer.json")

    def put_tokenizer(self, local_dir: Path) -> str:
        for path in sorted(local_dir.iterdir()):
            self.store.put_file(f"{TOKENIZER}/{path.name}", path)
        return self.tokenizer_url

    def fetch_tokenizer(self, dest: Path) -> Path:
        """Download the tokenizer files (tokenizer/, or the prefix itself) into `dest`."""
        prefix = f"{TOKENIZER}/" if self.store.exists(f"{TOKENIZER}/tokenizer.json") else ""
        dest.mkdir(parents=True, exist_ok=True)
        for key in self.store.list(prefix):
            if "/" not in key[len(prefix) :]:
                self.store.get_file(key, dest / key[len(prefix) :])
        return dest

    # -- packed tokens (the format: zhinao.data.token_shards)
    def has_tokens(self) -> bool:
        return self.store.exists(TOKENS_INDEX)

    def put_token_shard(self, name: str, data: bytes) -> str:
        """Store one shard (raw uint32 tokens); returns its key (what the index lists)."""
        key = f"{TOKENS}/{name}.bin"
        self.store.put_bytes(key, data)
        return key

    def fetch_token_shard(self, key: str, path: Path) -> None:
        self.store.get_file(key, path)

    def token_shard_url(self, key: str) -> str:
        return self.store.url(key)

    def read_tokens_index(self) -> TokenIndex:
        return TokenIndex.from_json(self.store.get_bytes(TOKENS_INDEX), where=self.store.url(TOKENS_INDEX))

    def write_tokens_index(self, index: TokenIndex) -> None:
        self.store.put_bytes(TOKENS_INDEX, index.to_json())

    def put_tokens_part(self, rank: int, part: TokenIndex) -> None:
        """One rank's share of the index, written by the tokenize step before rank 0 merges them."""
        self.store.put_bytes(f"{TOKENS_PARTS}/rank-{rank:05d}.json", part.to_json())

    def read_tokens_part(self, rank: int) -> TokenIndex:
        key = f"{TOKENS_PARTS}/rank-{rank:05d}.json"
        return TokenIndex.from_json(self.store.get_bytes(key), where=self.store.url(key))

    def put_token_piece(self, source: str, shard: int, rank: int, data: bytes) -> None:
        """Part of shard `shard` of `source` that one rank holds (zhinao.ablation.mixture_tokens), kept
        until rank 0 joins the parts of that shard."""
        self.store.put_bytes(f"{TOKENS_PIECES}/{shard:09d}-r{rank:05d}/{source}.bin", data)

    def token_pieces(self) -> dict[tuple[str, int], list[str]]:
        """(source, shard) -> the keys of its pieces, in rank order."""
        pieces: dict[tuple[str, int], list[str]] = {}
        for key in sorted(self.store.list(f"{TOKENS_PIECES}/")):
            head, source = key[len(TOKENS_PIECES) + 1 :].split("/", 1)
            pieces.setdefault((source.removesuffix(".bin"), int(head.split("-r")[0])), []).append(key)
        return pieces

    def delete_token_pieces(self) -> None:
        self.store.delete_prefix(f"{TOKENS_PIECES}/")

    # -- prepared records (the format: zhinao.data.record_shards), one set per name (e.g. `train`)
    def has_records(self, name: str) -> bool:
        return self.store.exists(f"{RECORDS}/{name}/index.json")

    def put_record_shard(self, name: str, shard: str, data: bytes) -> str:
        key = f"{RECORDS}/{name}/{shard}.rec"
        self.store.put_bytes(key, data)
        return key

    def read_records_index(self, name: str) -> RecordIndex:
        key = f"{RECORDS}/{name}/index.json"
        return RecordIndex.from_json(self.store.get_bytes(key), where=self.store.url(key))

    def write_records_index(self, name: str, index: RecordIndex) -> None:
        self.store.put_bytes(f"{RECORDS}/{name}/index.json", index.to_json())

    def put_records_part(self, name: str, rank: int, part: RecordIndex) -> None:
        self.store.put_bytes(f"{RECORDS}/{name}/parts/rank-{rank:05d}.json", part.to_json())

    def read_records_part(self, name: str, rank: int) -> RecordIndex:
        key = f"{RECORDS}/{name}/parts/rank-{rank:05d}.json"
        return RecordIndex.from_json(self.store.get_bytes(key), where=self.store.url(key))

    # -- report
    def report_key(self, name: str) -> str:
        return f"{REPORT}/{name}"

    def report_url(self, name: str) -> str:
        return self.store.url(self.report_key(name))

    def report_keys(self) -> list[str]:
        """Every key under report/ (relative to the output prefix), sorted."""
        return self.store.list(f"{REPORT}/")

    def put_report(self, name: str, data: bytes) -> str:
        """A plot or document for the run's REPORT.md; returns its URL."""
        self.store.put_bytes(self.report_key(name), data)
        return self.report_url(name)

    @property
    def report(self) -> ObjectStore:
        """The report/ prefix as a store of its own (for writers that lay out several files)."""
        return self.store.child(REPORT)
