"""The ablation's prepare step on 2 gloo ranks (the job's entry point, real SeaweedFS S3) writes the
1-rank preparation's files byte for byte: the same mixtures, token shards, validation tokens and
summaries, and the shards hold exactly the mixture's tokens, packed per source."""

import contextlib
import io
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp
from ablation_specs import cpu_proxy

import zhinao.ablation.mixture as mixture
import zhinao.ablation.prepare as prepare_module
from zhinao.artifacts import StageOutput
from zhinao.data.demo_corpus import real_documents
from zhinao.data.token_shards import WIRE_DTYPE
from zhinao.storage import ObjectStore
from zhinao.tokenizer import EOD
from zhinao_k8s.api.ablation import Ablation
from zhinao_k8s.jobs.ablation_step import main
from zhinao_k8s.render.ablation import ENV_ABLATION_SPEC
from zhinao_k8s.runner.local import free_port

SHARD_TOKENS = 256  # 8 sequences of 32: many shards, several of them split across the two ranks
SEQ_LEN = 32
PART_BYTES = 2048  # the mixtures' documents in several part files, so a rank's run starts inside one


def spec(storage: str, endpoint: str, base: str, single_file: str, **fields) -> str:
    """The Ablation's wire form; `fields` replace spec fields (wire names)."""
    ablation = Ablation.model_validate(
        {
            "metadata": {"name": "abl"},
            "spec": {
                "storage": {"uri": storage, "endpoint": endpoint},
                "base": {"corpus": base},  # two files: each rank measures one
                "recipes": [
                    {"name": "a", "dataset": single_file},  # one file: the ranks take every 2nd line
                    {"name": "b", "dataset": base},
                ],
                "seeds": 1,
                "proxy": cpu_proxy(tokens=8000, seq_len=SEQ_LEN, micro_batch=4),
                "tokenizer": {"vocabSize": 512},
                "evaluations": {"validLoss": {"heldOutShare": 0.2, "maxSequences": 16}},
            }
            | fields,
        }
    )
    return json.dumps(ablation.to_wire())


def _rank(rank: int, world: int, port: int, ablation: str, env: dict[str, str]) -> None:
    os.environ.update(env, RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    prepare_module.SHARD_TOKENS = SHARD_TOKENS
    mixture.PART_BYTES = PART_BYTES
    code = main(["prepare"], {ENV_ABLATION_SPEC: ablation})
    assert code == 0, f"rank {rank} exited {code}"


def _outcome(rank: int, world: int, port: int, ablation: str, envs: list[dict[str, str]], out: Path) -> None:
    """Rank `rank`'s exit code (or what it raised) and stderr, written to out/rank-<r>.json."""
    os.environ.update(envs[rank], RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code: int | str = main(["prepare"], {ENV_ABLATION_SPEC: ablation})
        except BaseException as exc:  # what the test must not see: a traceback in the pod's log
            code = f"raised {type(exc).__name__}"
    (out / f"rank-{rank}.json").write_text(json.dumps([code, err.getvalue()]))


def files(store: ObjectStore) -> dict[str, bytes]:
    return {key: store.get_bytes(key) for key in store.list()}


def tokens_of(train: StageOutput, source: str) -> np.ndarray:
    shards = [s for s in train.read_tokens_index().shards if s.source == source]
    return np.concatenate([np.frombuffer(train.store.get_bytes(s.key), dtype=WIRE_DTYPE) for s in shards])


@pytest.mark.timeout(300)
def test_two_ranks_prepare_the_one_rank_files(s3_server, s3_store: ObjectStore, monkeypatch, tmp_path: Path) -> None:
    docs = real_documents(160, random.Random(0))
    for n, half in enumerate((docs[:80], docs[80:])):
        s3_store.put_bytes(f"corpus/part-{n:05d}.jsonl", "".join(json.dumps(d) + "\n" for d in half).encode())
    s3_store.put_bytes("single/part-00000.jsonl", s3_store.get_bytes("corpus/part-00001.jsonl"))
    base, single = s3_store.url("corpus"), s3_store.url("single")
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(prepare_module, "SHARD_TOKENS", SHARD_TOKENS)
    monkeypatch.setattr(mixture, "PART_BYTES", PART_BYTES)

    started = time.monotonic()
    assert main(["prepare"], {ENV_ABLATION_SPEC: spec(s3_store.url("one"), s3_server.endpoint, base, single)}) == 0
    one_rank_s = time.monotonic() - started
    started = time.monotonic()
    two = spec(s3_store.url("two"), s3_server.endpoint, base, single)
    mp.spawn(_rank, args=(2, free_port(), two, s3_server.env()), nprocs=2, join=True)
    print(f"prepare: 1 rank {one_rank_s:.1f} s, 2 ranks {time.monotonic() - started:.1f} s (spawn included)")

    prep1, prep2 = s3_store.child("one/abl/prep"), s3_store.child("two/abl/prep")
    got, expected = files(prep2), files(prep1)
    second_part = {f"recipes/{r}/train/tokens/parts/rank-00001.json" for r in ("a", "b")}
    assert set(got) == set(expected) | second_part  # no piece left behind
    same = [k for k in expected if "/tokens/parts/" not in k]  # the index parts say which rank wrote what
    assert [k for k in same if got[k] != expected[k]] == []  # tokenizer, valid, docs, shards, index, mix.json
    assert "valid/tokens.npy" in expected and "done.json" in expected

    for recipe in ("a", "b"):
        train = StageOutput(prep2.child(f"recipes/{recipe}/train"))
        parts = [train.read_tokens_part(r) for r in (0, 1)]
        assert all(p.documents > 0 for p in parts)  # both ranks packed documents
        assert any(s.sequences == SHARD_TOKENS // SEQ_LEN for s in parts[1].shards)  # rank 1 wrote whole shards
        # the shards hold each source's documents + <eod> in mixture order, but the last partial sequence
        tok = prepare_module.fetch_prep_tokenizer(prep2, tmp_path / f"tok-{recipe}")
        eod = tok.convert_tokens_to_ids(EOD)
        part_files = train.store.list("docs/")
        assert len(part_files) > 4
        mixed = [json.loads(line) for key in part_files for line in train.store.get_bytes(key).splitlines()]
        for source in sorted({d.get("source") or "default" for d in mixed}):
            texts = [d["text"] for d in mixed if (d.get("source") or "default") == source]
            stream = [t for ids in tok(texts, add_special_tokens=False)["input_ids"] for t in [*ids, eod]]
            packed = tokens_of(train, source)
            assert len(packed) == len(stream) // SEQ_LEN * SEQ_LEN
            assert packed.tolist() == stream[: len(packed)]

    # an earlier 2-rank attempt resumed by 1 rank: a recipe to redo, a stray piece of another attempt
    prep2.delete("done.json")
    prep2.delete("recipes/b/train/mix.json")
    StageOutput(prep2.child("recipes/b/train")).put_token_piece("webpages", 0, 7, b"\0" * 8)
    assert main(["prepare"], {ENV_ABLATION_SPEC: two}) == 0
    redone = files(prep2)
    assert [k for k in same if redone[k] != expected[k]] == []
    assert set(redone) == set(got)


@pytest.mark.timeout(300)
def test_a_rank_that_fails_ends_every_rank_with_one_line(s3_server, s3_store: ObjectStore, tmp_path: Path) -> None:
    """Rank 1 cannot read the corpus (its credentials are wrong): it ends with the storage line, and
    rank 0, whose next collective finds rank 1 gone, ends with one line too, not gloo's traceback."""
    docs = real_documents(40, random.Random(0))
    s3_store.put_bytes("corpus/part-00000.jsonl", "".join(json.dumps(d) + "\n" for d in docs).encode())
    ablation = spec(s3_store.url("out"), s3_server.endpoint, s3_store.url("corpus"), s3_store.url("corpus"))
    env = s3_server.env()
    envs = [env, {**env, "AWS_SECRET_ACCESS_KEY": "not-the-key"}]
    mp.spawn(_outcome, args=(2, free_port(), ablation, envs, tmp_path), nprocs=2, join=True)

    outcomes = {r: json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)}
    assert [outcomes[r][0] for r in (0, 1)] == [1, 1], outcomes
    for rank, (_, err) in outcomes.items():
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (rank, err)
    assert "another rank of the job ended" in outcomes[0][1], outcomes[0][1]
    assert "ablation prepare failed" in outcomes[1][1] and "another rank" not in outcomes[1][1], outcomes[1][1]


def test_a_preparation_made_from_other_values_is_refused_in_one_line(
    s3_server, s3_store: ObjectStore, monkeypatch, capsys
) -> None:
    """Another mixture share would reuse the tokenizer, mixtures and validation set made for the old
    values: refused, naming the field; another number of seeds reuses the preparation."""
    docs = real_documents(40, random.Random(0))
    s3_store.put_bytes("corpus/part-00000.jsonl", "".join(json.dumps(d) + "\n" for d in docs).encode())
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    corpus = s3_store.url("corpus")

    def prepare(**fields) -> int:
        return main(
            ["prepare"], {ENV_ABLATION_SPEC: spec(s3_store.url("out"), s3_server.endpoint, corpus, corpus, **fields)}
        )

    assert prepare() == 0
    done = s3_store.get_bytes("out/abl/prep/done.json")
    capsys.readouterr()
    assert prepare(seeds=2) == 0
    assert s3_store.get_bytes("out/abl/prep/done.json") == done
    assert prepare(experimentalShare=0.3) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "prepared from other values (experimentalShare: 0.5 -> 0.3)" in err, err
