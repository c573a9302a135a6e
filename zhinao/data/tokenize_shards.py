"""The distributed tokenize step: every rank tokenizes its own share of the corpus into token shards.

Rank r of W reads its share of the corpus lines (`zhinao.corpus.lines_of_rank`: the files r, r+W,
..., or every W-th line when there are fewer files than ranks), tokenizes them in batches with the fast tokenizer, packs them per
source (`SourcePacker`) and uploads each shard as soon as it is full, so a rank holds at most one
shard per source. It then writes its index part; rank 0 merges the parts once every rank is done.
"""

import itertools
import logging
from collections.abc import Callable, Iterator

from zhinao.artifacts import StageOutput
from zhinao.config.stream import TokenStreamParams
from zhinao.corpus import Document, corpus_keys, lines_of_rank, read_documents
from zhinao.data.token_shards import Shard, SourcePacker, SpanPacker, TokenIndex, shard_bytes, shard_name
from zhinao.storage import ObjectStore
from zhinao.tokenizer import EOD

log = logging.getLogger(__name__)
BATCH_DOCUMENTS = 256  # documents per call of the Rust batch encoder


def documents_of_rank(
    corpus: ObjectStore, *, rank: int, world_size: int, text_field: str, source_field: str
) -> Iterator[Document]:
    lines = lines_of_rank(corpus, corpus_keys(corpus), rank=rank, world_size=world_size)
    return read_documents(corpus, text_field=text_field, source_field=source_field, lines=lines)


def pack_documents(
    docs: Iterator[Document], tokenizer, packer_for: Callable[[str], SourcePacker | SpanPacker], put: Callable
) -> int:
    """Tokenize `docs` in batches and add each to its source's packer (`packer_for(source)`, made at
    the source's first document: a SourcePacker or a SpanPacker); `put(source, out)` every shard or
    piece a packer hands out, the packers' tails last in source order. Returns the documents read."""
    packers: dict[str, SourcePacker | SpanPacker] = {}
    documents = 0
    while batch := list(itertools.islice(docs, BATCH_DOCUMENTS)):
        ids = tokenizer([d.text for d in batch], add_special_tokens=False)["input_ids"]
        for doc, doc_ids in zip(batch, ids, strict=True):
            if doc.source not in packers:
                packers[doc.source] = packer_for(doc.source)
            for out in packers[doc.source].add(doc_ids):
                put(doc.source, out)
        documents += len(batch)
    for source in sorted(packers):
        if (tail := packers[source].finish()) is not None:
            put(source, tail)
    return documents


def tokenize_share(
    corpus: ObjectStore,
    tokenizer,
    out: StageOutput,
    *,
    seq_len: int,
    params: TokenStreamParams,
    rank: int,
    world_size: int,
    text_field: str = "text",
    source_field: str = "source",
) -> TokenIndex:
    """Tokenize this rank's documents into `out`'s tokens and write its index part."""
    eod = tokenizer.convert_tokens_to_ids(EOD)
    shard_sequences = max(1, params.shard_tokens // seq_len)
    part = TokenIndex(seq_len=seq_len, vocab_size=len(tokenizer))

    def put(source: str, seqs) -> None:
        name = shard_name(source, rank=rank, n=sum(s.source == source for s in part.shards))
        key = out.put_token_shard(name, shard_bytes(seqs))
        part.shards.append(Shard(key, source, int(len(seqs))))

    docs = documents_of_rank(corpus, rank=rank, world_size=world_size, text_field=text_field, source_field=source_field)
    part.documents = pack_documents(
        docs,
        tokenizer,
        lambda source: SourcePacker(seq_len=seq_len, shard_sequences=shard_sequences, eod_id=eod),
        put,
    )
    out.put_tokens_part(rank, part)
    log.info(
        "rank %d tokenized %d documents into %d sequences of %d tokens (%d shards)",
        rank,
        part.documents,
        part.sequences,
        seq_len,
        len(part.shards),
    )
    return part


def merge_parts(out: StageOutput, *, world_size: int, where: str) -> TokenIndex:
    """Rank 0, after every rank finished: the one index over all parts (`where` names the corpus)."""
    index = TokenIndex.merge([out.read_tokens_part(r) for r in range(world_size)])
    if not index.shards:
        raise SystemExit(f"corpus {where} yields no sequence of {index.seq_len} tokens")
    out.write_tokens_index(index)
    return index
