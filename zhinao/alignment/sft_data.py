"""SFT data prepared on every rank into streamable record sets of packed rows (TRAIN and EVAL).

Curation is the report's (section 3.1.1: source ratings, exact dedup, label reweighting) with the
same result at any world size, although each rank reads only its share of the lines:
1. Every rank scans its share for what needs a global view: the per-source rating sums
   (`minSourceRating` without `sourceRatings`) and, with `dedup`, a 64-bit key and the global place
   of every valid conversation. The ranks exchange them (all_gather); the keys are the one thing that
   grows with the dataset (16 bytes per conversation, in the prepare step only).
2. Every rank reads its share again and keeps a conversation when its source is rated high enough and
   it is the first occurrence of its key (in file, then line order); it is repeated per its label
   weight (seeded by its place), encoded, held out by a hash of its place (`evalFraction`) and packed
   greedily into rows of maxLen, each row one record {"examples": [[input_ids, labels], ...]}.
"""

import hashlib
import random
from collections import Counter

import numpy as np

from zhinao.alignment.data import EVAL, TRAIN, held_out, input_keys, records_of_rank
from zhinao.chat import IGNORE_INDEX, ChatEncoder, validate_sft_messages
from zhinao.config.sft import SFTParams
from zhinao.data import sft_tools
from zhinao.data.sft_packing import RowPacker

SUMMARY_COUNTS = (
    "records_in",
    "invalid",
    "dropped_sources",
    "dropped_source_records",
    "duplicates",
    "records_used",
    "skipped_too_long",
    "tokens",
    "target_tokens",
)
"""What the SFT summary's `data` reports (summed over ranks)."""


def place_of(key_index: dict[str, int], key: str, number: int) -> int:
    """A line's global place: file (in sorted order), then line; what "first occurrence" means."""
    return key_index[key] << 32 | number


def conversation_hash(record: dict) -> int:
    return int.from_bytes(hashlib.sha1(sft_tools.conversation_key(record).encode()).digest()[:8], "little") >> 1


def valid_records(uri: str, params: SFTParams, counts: Counter, *, rank: int, world_size: int):
    """(key, line number, record) of this rank's valid conversations (others counted as `invalid`)."""
    for key, number, r in records_of_rank(uri, counts, rank=rank, world_size=world_size):
        try:
            if not isinstance(r, dict):
                raise ValueError("not a JSON object")
            validate_sft_messages(r.get(params.messages_field) or [])
        except ValueError:
            counts["invalid"] += 1
            continue
        yield key, number, {**r, "messages": r[params.messages_field]}


def global_view(session, uri: str, params: SFTParams) -> tuple[dict[str, float], np.ndarray | None]:
    """Pass 1 (collective): (source ratings, sorted places of the conversations dedup keeps, or None
    without dedup)."""
    env = session.env
    _store, keys = input_keys(uri)
    key_index = {k: i for i, k in enumerate(sorted(keys))}
    need_ratings = params.min_source_rating is not None
    sums: dict[str, tuple[float, int]] = {}
    hashes, places = [], []
    if need_ratings or params.dedup:
        for key, number, r in valid_records(uri, params, Counter(), rank=env.rank, world_size=env.world_size):
            if need_ratings and isinstance(r.get("rating"), (int, float)):
                total, n = sums.get(sft_tools.source_of(r), (0.0, 0))
                sums[sft_tools.source_of(r)] = (total + float(r["rating"]), n + 1)
            if params.dedup:
                hashes.append(conversation_hash(r))
                places.append(place_of(key_index, key, number))
    ratings = {**sft_tools.merge_rating_sums(session.gather(sums)), **params.source_ratings} if need_ratings else {}
    if not params.dedup:
        return ratings, None
    parts = session.gather((np.asarray(hashes, dtype=np.int64), np.asarray(places, dtype=np.int64)))
    h = np.concatenate([p[0] for p in parts])
    p = np.concatenate([p[1] for p in parts])
    order = np.lexsort((p, h))  # by key, then place: the first of each key's run is its first occurrence
    first = np.ones(len(order), dtype=bool)
    first[1:] = h[order][1:] != h[order][:-1]
    return ratings, np.sort(p[order][first])


def sft_sets(session, uri: str, tokenizer, params: SFTParams):
    """`produce` for prepare_record_sets: this rank's packed rows of TRAIN and EVAL."""
    env = session.env
    enc = ChatEncoder(tokenizer)

    def produce(counts: Counter):
        counts.update(dict.fromkeys(SUMMARY_COUNTS, 0))  # reported even when nothing was counted
        ratings, keep = global_view(session, uri, params)
        low = {s for s, v in ratings.items() if params.min_source_rating is not None and v < params.min_source_rating}
        if env.is_main:  # every rank knows them; the counts of the ranks are summed
            counts["dropped_sources"] = len(low)
        _store, keys = input_keys(uri)
        key_index = {k: i for i, k in enumerate(sorted(keys))}
        packers = {TRAIN: RowPacker(params.max_len), EVAL: RowPacker(params.max_len)}
        for key, number, r in valid_records(uri, params, counts, rank=env.rank, world_size=env.world_size):
            place = place_of(key_index, key, number)
            if sft_tools.source_of(r) in low:
                counts["dropped_source_records"] += 1
                continue
            if keep is not None:
                at = int(np.searchsorted(keep, place))
                if at == len(keep) or keep[at] != place:
                    counts["duplicates"] += 1
                    continue
            w = sft_tools.record_weight(r, params.label_weights)
            copies = int(w) + (1 if random.Random(f"{params.seed}:{place}").random() < w - int(w) else 0)
            counts["records_used"] += copies
            name = EVAL if held_out(key, number, seed=params.seed, fraction=params.eval_fraction) else TRAIN
            e = enc.conversation(r["messages"], system=params.system_prompt)
            for _ in range(copies):
                row = packers[name].add(e.input_ids, e.labels)
                if row:
                    yield name, row_record(row, counts, name)
        for name, packer in packers.items():
            counts["skipped_too_long"] += packer.skipped
            if row := packer.finish():
                yield name, row_record(row, counts, name)

    return produce


def row_record(row: list, counts: Counter, name: str) -> dict:
    if name == TRAIN:
        counts["tokens"] += sum(len(ids) for ids, _ in row)
        counts["target_tokens"] += sum(sum(1 for x in labels if x != IGNORE_INDEX) for _, labels in row)
    return {"examples": [[list(ids), list(labels)] for ids, labels in row]}
