"""Compose the steps into passes over the corpus, sharded by rank.

Local steps run back to back on each document; a global step splits the run into passes: its
`collect` ends one pass, `sync` exchanges with the other ranks, and its `apply` starts the next
pass, which reads the previous pass' survivors from a local spill file. Memory holds one document
at a time plus compact per-document artefacts (hashes, ids); disk holds one spill file per pass.
"""

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from zhinao.config.data import DataParams
from zhinao.data.clean import Rules
from zhinao.data.dedup import ExactDedup, ParagraphDedup, SentenceDedup, StepContext
from zhinao.data.exchange import Comm, Sharding, spool_dir
from zhinao.data.io import BadFile, Doc, Rejected, ShardWriter, list_inputs, read_input, reject_record
from zhinao.data.junk import HashedLogReg, Junk, Quality, load_scorer
from zhinao.data.lsh import MinHashDedup
from zhinao.data.mix import Mix
from zhinao.data.pii import Pii
from zhinao.data.prepare import KeywordFilter, LangId, UrlFilter
from zhinao.data.retention import Cascade, write_retention
from zhinao.data.steps import parse_lines
from zhinao.distributed import DistEnv
from zhinao.storage import ObjectStore, open_store

log = logging.getLogger(__name__)


def fetch_uri(uri: str) -> bytes:
    """Bytes of a file named by `s3://...`, `file://...` or a plain local path."""
    if "://" not in uri:
        return Path(uri).read_bytes()
    parent, _, name = uri.rstrip("/").rpartition("/")
    return open_store(parent).get_bytes(name)


def _local_copy(uri: str, tmp: Path) -> str:
    if "://" not in uri:
        return uri
    path = tmp / Path(uri).name
    path.write_bytes(fetch_uri(uri))
    return str(path)


def build_steps(params: DataParams, ctx: StepContext) -> list:
    """The enabled steps in the report's order (Fig. 1)."""
    p = params
    steps: list = []
    if p.url_filter.enabled:
        read = lambda uri: parse_lines(fetch_uri(uri).decode("utf-8")) if uri else []  # noqa: E731
        steps.append(
            UrlFilter(
                p.url_filter,
                extra_black=read(p.url_filter.blacklist_file),
                extra_white=read(p.url_filter.whitelist_file),
            )
        )
    if p.keywords.enabled:
        extra = parse_lines(fetch_uri(p.keywords.keywords_file).decode("utf-8")) if p.keywords.keywords_file else []
        steps.append(KeywordFilter(p.keywords, extra=extra))
    if p.exact_dedup.url or p.exact_dedup.body:
        steps.append(ExactDedup(p.exact_dedup, ctx))
    if p.lang_id.enabled:
        model = _local_copy(p.lang_id.fasttext_model, ctx.tmp) if p.lang_id.fasttext_model else None
        steps.append(LangId(p.lang_id, model_path=model))
    if p.rules.enabled:
        steps.append(Rules(p.rules))
    if p.junk.enabled:
        model = HashedLogReg.from_bytes(fetch_uri(p.junk.model)) if p.junk.model else None
        steps.append(Junk(p.junk, model, exam_min_markers=p.rules.exam_min_markers))
    if p.quality.model:
        steps.append(Quality(p.quality, load_scorer(p.quality.model, fetch_uri)))
    if p.pii.enabled:
        steps.append(Pii(p.pii))
    if p.minhash.enabled:
        steps.append(MinHashDedup(p.minhash, ctx))
    if p.paragraph_dedup.enabled:
        steps.append(ParagraphDedup(p.paragraph_dedup, ctx))
    if p.sentence_dedup.enabled:
        steps.append(SentenceDedup(p.sentence_dedup, ctx))
    if p.mix.enabled:
        steps.append(Mix(p.mix))
    return steps


def is_global(step) -> bool:
    return hasattr(step, "collect")


@dataclass
class Pass:
    apply: object | None
    """The global step whose decisions start this pass."""
    local: list
    collect: object | None
    """The global step whose artefacts this pass collects (None: the pass writes the output)."""


def plan_passes(steps: list) -> list[Pass]:
    passes, local, apply = [], [], None
    for s in steps:
        if is_global(s):
            passes.append(Pass(apply, local, s))
            local, apply = [], s
        else:
            local.append(s)
    passes.append(Pass(apply, local, None))
    return passes


class Progress:
    """A rich progress bar on a terminal, a log line every `every_s` seconds otherwise."""

    def __init__(self, rank: int, every_s: float = 30.0):
        self.rank, self.every_s = rank, every_s
        self.tty = sys.stderr.isatty()
        self._bar = None

    def start(self, label: str, total: int | None) -> None:
        self.label, self.total, self.n, self.t0, self.last = label, total, 0, time.monotonic(), time.monotonic()
        if self.tty:
            from rich.progress import Progress as Bar

            self._bar = Bar(transient=True)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total)

    def advance(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.advance(self._task, n)
        elif time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            rate = self.n / max(self.last - self.t0, 1e-9)
            of = f"/{self.total}" if self.total else ""
            log.info("rank %d %s: %d%s docs (%.0f docs/s)", self.rank, self.label, self.n, of, rate)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        dt = time.monotonic() - self.t0
        log.info("rank %d %s: %d docs in %.1fs", self.rank, self.label, self.n, dt)


def run_data_processing(
    params: DataParams,
    *,
    corpus: ObjectStore,
    output: ObjectStore,
    dist: DistEnv,
    run_id: str = "default",
) -> dict | None:
    """Run every step of this rank's shard; returns the merged report on rank 0 (None elsewhere).

    Writes `docs/part-RRRRR-NNNNN.jsonl`, `rejects/part-RRRRR-NNNNN.jsonl` and (rank 0)
    `report/retention.{json,md,png}` under `output`.
    """
    t_start = time.monotonic()
    keys, skipped = list_inputs(corpus)
    if not keys:
        raise EmptyCorpus(
            f"no input files (*.jsonl, *.ndjson, *.json, optionally .gz/.zst/.bz2, or *.parquet) under {corpus.uri}"
            + (f"; found only {', '.join(skipped[:5])}" if skipped else "")
        )
    for key in skipped:
        log.warning("skipping %s: not an input format (see report/retention.json files.skipped)", key)
    sharding = Sharding(len(keys), dist.world_size)
    tmp = spool_dir(params.output.spill_dir)
    work = output.child(f"_work/{run_id}")
    comm = Comm(
        work, dist.rank, dist.world_size, timeout_s=params.output.barrier_timeout_s, poll_s=params.output.barrier_poll_s
    )
    ctx = StepContext(sharding, dist.rank, tmp)
    try:
        steps = build_steps(params, ctx)
        cascade = Cascade(["input"] + [n for s in steps for n in s.names])
        progress = Progress(dist.rank)
        cfg = params.input
        bad_files: list[dict] = []
        with ShardWriter(
            output, "rejects", rank=dist.rank, per_file=params.output.rejects_per_file, tmp_dir=str(tmp)
        ) as rejects:
            source = _read_shard(corpus, keys, sharding, dist.rank, params, cascade, rejects, tmp, bad_files)
            spill_in: Path | None = None
            written = 0
            for k, ps in enumerate(plan_passes(steps)):
                progress.start(f"pass {k + 1}", None)
                if ps.collect is None:
                    with ShardWriter(
                        output, "docs", rank=dist.rank, per_file=params.output.docs_per_file, tmp_dir=str(tmp)
                    ) as out:
                        for doc, n in _run_pass(source, ps, cascade, rejects, cfg, progress):
                            rec = doc.to_record(cfg)
                            for _ in range(n):
                                out.write(rec)
                            written += n
                else:
                    spill_out = tmp / f"pass-{k + 1}.jsonl"
                    with open(spill_out, "w", encoding="utf-8") as f:
                        for doc, _ in _run_pass(source, ps, cascade, rejects, cfg, progress):
                            ps.collect.collect(doc)
                            f.write(doc.to_spill())
                            f.write("\n")
                    progress.stop()
                    log.info("rank %d: exchanging %s", dist.rank, "/".join(ps.collect.names))
                    ps.collect.sync(comm)
                    if spill_in is not None:
                        spill_in.unlink(missing_ok=True)
                    spill_in = spill_out
                    source = _read_spill(spill_out)
            progress.stop()
        mix = next((s for s in steps if isinstance(s, Mix)), None)
        mine = {"steps": cascade.to_rows(), "docs_written": written, "mix": _mix_state(mix), "bad_files": bad_files}
        files = {"read": len(keys), "skipped": [{"file": k, "reason": "not an input format"} for k in skipped]}
        return _finish(params, output, comm, dist, mine, files=files, elapsed=time.monotonic() - t_start, tmp=tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_shard(corpus, keys, sharding, rank, params, cascade, rejects, tmp, bad_files: list[dict]) -> Iterator[Doc]:
    """This rank's documents; bad lines go to the rejects, damaged files to `bad_files` (once: by
    the rank that owns the file's first line, since with few files every rank reads every file)."""
    cfg = params.input
    for file_idx in sharding.files_of(rank):
        local = tmp / f"input-{file_idx}-{Path(keys[file_idx]).name}"
        corpus.get_file(keys[file_idx], local)
        try:
            for item in read_input(local, file_idx, cfg, owned=lambda line: sharding.owns_line(rank, line)):
                if isinstance(item, BadFile):
                    log.warning(
                        "input %s: %s (%s) after %d lines", keys[file_idx], item.reason, item.detail, item.lines
                    )
                    if sharding.owns_line(rank, 0):
                        rec = {"file": keys[file_idx], "file_index": file_idx, "reason": item.reason}
                        bad_files.append({**rec, "detail": item.detail, "lines_read": item.lines})
                        rejects.write({"step": "input", **rec, "detail": item.detail})
                elif isinstance(item, Rejected):
                    cascade.record_bad_input(item.raw_bytes, item.reason)
                    rejects.write(reject_record("input", item.reason, item, cfg))
                else:
                    cascade.record(("input",), item.nbytes, item.nbytes, None)
                    yield item
        finally:
            local.unlink(missing_ok=True)


def _read_spill(path: Path) -> Iterator[Doc]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield Doc.from_spill(line)


def _run_pass(
    source: Iterator[Doc], ps: Pass, cascade: Cascade, rejects: ShardWriter, cfg, progress
) -> Iterator[tuple[Doc, int]]:
    chain = ([ps.apply] if ps.apply is not None else []) + ps.local
    for doc in source:
        progress.advance()
        copies = 1
        for step in chain:
            before = doc.nbytes
            drop = step.apply(doc) if is_global(step) else step(doc)
            copies = getattr(step, "last_copies", 1)
            cascade.record(
                step.names, before, doc.nbytes, drop.step if drop else None, drop.reason if drop else "", copies
            )
            if drop is not None:
                rejects.write(reject_record(drop.step, drop.reason, doc, cfg))
                break
        else:
            yield doc, copies


def _mix_state(mix: Mix | None) -> dict | None:
    if mix is None:
        return None
    return {
        "tokens_in": mix.global_in,
        "tokens_out": mix.tokens_out,
        "factors": mix.factors,
        "targets": mix.cfg.targets,
    }


class EmptyCorpus(RuntimeError):
    """The stage has nothing to work on, or kept nothing (and `output.allowEmpty` is off)."""


def _finish(
    params, output, comm: Comm, dist: DistEnv, mine: dict, *, files: dict, elapsed: float, tmp: Path
) -> dict | None:
    import numpy as np

    blob = np.frombuffer(json.dumps(mine).encode(), dtype=np.uint8)
    got = comm.exchange("report/stats", [blob] + [blob[:0]] * (dist.world_size - 1))
    if not dist.is_main:
        # Rank 0 alone waits at this last barrier, so it can delete _work without stranding a poller.
        comm.store.put_bytes(f"final/done-{dist.rank:05d}", b"")
        return None
    parts = [json.loads(p.tobytes()) for p in got]
    report = {
        "steps": Cascade.merge([p["steps"] for p in parts]),
        "docs_written": sum(p["docs_written"] for p in parts),
        "mix": _merge_mix([p["mix"] for p in parts]),
        "world_size": dist.world_size,
        "input_files": files["read"],
        "files": {
            **files,
            "rejected": sorted((f for p in parts for f in p["bad_files"]), key=lambda f: f["file_index"]),
        },
        "elapsed_s": round(elapsed, 2),
        "token_estimate": "utf8_bytes/4",
    }
    urls = write_retention(output, report, tmp_png=str(tmp / "retention.png"))
    if dist.world_size > 1:
        _wait_final(comm)
    if not params.output.keep_work:
        output.delete_prefix("_work/")
    log.info("data stage done: %d documents written; report %s", report["docs_written"], urls["md"])
    if report["docs_written"] == 0 and not params.output.allow_empty:
        raise EmptyCorpus(
            f"the data stage kept 0 documents (every input line or file was rejected; see {urls['md']} and "
            "rejects/); set params.output.allowEmpty: true to accept an empty output"
        )
    return report


def _wait_final(comm: Comm) -> None:
    deadline = time.monotonic() + comm.timeout_s
    while len(comm.store.list("final/done-")) < comm.world_size - 1:
        if time.monotonic() > deadline:
            raise TimeoutError("final barrier: ranks did not finish")
        time.sleep(min(comm.poll_s, 0.05))


def _merge_mix(parts: list[dict | None]) -> dict | None:
    if not parts or parts[0] is None:
        return None
    out = dict(parts[0])
    out["tokens_out"] = {}
    for p in parts:
        for k, v in p["tokens_out"].items():
            out["tokens_out"][k] = out["tokens_out"].get(k, 0) + v
    return out


def default_run_id() -> str:
    """Shared by every rank of one job: ZHINAO_RUN_ID, else torchrun's run id, else 'default'."""
    rid = os.environ.get("ZHINAO_RUN_ID") or os.environ.get("TORCHELASTIC_RUN_ID") or ""
    return rid if rid and rid != "none" else "default"
