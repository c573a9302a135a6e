"""An ablation's data through the local runner: its data pipeline runs every recipe's data stage on 2
ranks (real torchrun processes, cross-rank dedup) and its prepare job on 2 pods (the rendered
PyTorchJob), and the result is the 1-rank result: the same kept documents, the same mixtures."""

import json
from collections import Counter
from pathlib import Path

import pytest
from ablation_specs import cpu_proxy

from zhinao.artifacts import StageOutput, published_store
from zhinao.data.demo_corpus import build_demo_corpus
from zhinao.storage import FileStore
from zhinao_k8s.api.ablation import Ablation
from zhinao_k8s.render.ablation_runs import data_pipeline
from zhinao_k8s.render.pytorchjob import render_pipeline
from zhinao_k8s.runner.ablation import prepare_ablation, threads


def ablation(root: Path, corpus: str, replicas: int) -> Ablation:
    return Ablation.model_validate(
        {
            "metadata": {"name": "abl"},
            "spec": {
                "storage": {"uri": f"file://{root}/store-{replicas}"},
                "base": {"corpus": corpus},
                "corpus": corpus,
                "recipes": [
                    {"name": "dedup-on", "data": {}},
                    {
                        "name": "dedup-off",
                        "data": {"exactDedup": {"url": False, "body": False}, "minhash": {"enabled": False}},
                    },
                ],
                "seeds": 1,
                "dataJobs": {"replicas": replicas, "cpu": "1", "memory": "1Gi"},
                "proxy": cpu_proxy(tokens=60000, seq_len=32, micro_batch=4),
                "tokenizer": {"vocabSize": 512},
                "evaluations": {"validLoss": {"everySteps": 5, "heldOutShare": 0.2, "maxSequences": 16}},
            },
        }
    )


def published(output: Path) -> Path:
    """Where a data stage's files are: its published generation (a torchrun run), else the prefix
    (an in-process run)."""
    return Path(published_store(FileStore(output)).uri.removeprefix("file://"))


def jsonl(directory: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(directory.glob("*.jsonl")) for line in path.read_text().splitlines()]


def texts(directory: Path) -> Counter:
    return Counter(r["text"] for r in jsonl(directory))


@pytest.mark.timeout(600)
def test_recipes_processed_on_2_ranks_give_the_1_rank_documents_and_mixtures(tmp_path: Path) -> None:
    build_demo_corpus(f"file://{tmp_path}", n_docs=150)
    corpus = f"file://{tmp_path}/corpus"
    one, two = ablation(tmp_path, corpus, 1), ablation(tmp_path, corpus, 2)

    # what a cluster runs: one data-stage PyTorchJob per recipe, Master + 1 Worker, writing under prep/
    jobs = [o for o in render_pipeline(data_pipeline(two)) if o["kind"] == "PyTorchJob"]
    assert [j["metadata"]["name"] for j in jobs] == ["abl-data-recipe-dedup-on", "abl-data-recipe-dedup-off"]
    assert all(j["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1 for j in jobs)

    with threads(1):
        expected = prepare_ablation(one, workdir=tmp_path / "w1", in_process=True)  # world size 1, this process
        got = prepare_ablation(two, workdir=tmp_path / "w2")  # 2 ranks per data stage, 2 prepare pods
    prep1, prep2 = (tmp_path / f"store-{r}" / "abl" / "prep" for r in (1, 2))
    for recipe in ("dedup-on", "dedup-off"):
        data1, data2 = (published(p / "recipes" / recipe / "data") / "docs" for p in (prep1, prep2))
        assert {p.name.split("-")[1] for p in data2.glob("*.jsonl")} == {"00000", "00001"}  # both ranks wrote
        assert texts(data2) == texts(data1)
        train1, train2 = (p / "recipes" / recipe / "train" / "docs" for p in (prep1, prep2))
        assert Counter((r["text"], r["ablation_part"]) for r in jsonl(train2)) == Counter(
            (r["text"], r["ablation_part"]) for r in jsonl(train1)
        )
    assert got == expected
    for recipe in ("dedup-on", "dedup-off"):  # both prepare pods packed documents; the same token shards
        train1, train2 = (StageOutput.at(f"file://{p}/recipes/{recipe}/train") for p in (prep1, prep2))
        assert all(train2.read_tokens_part(r).documents > 0 for r in (0, 1))
        index = train1.read_tokens_index()
        assert train2.read_tokens_index() == index
        assert all(train2.store.get_bytes(s.key) == train1.store.get_bytes(s.key) for s in index.shards)
    on, off = (
        sum(texts(published(prep1 / "recipes" / r / "data") / "docs").values()) for r in ("dedup-on", "dedup-off")
    )
    assert on < off  # the recipes differ: deduplication removed the planted copies
    for recipe, mix in expected["recipes"].items():  # half of the 60,000 tokens from each side, whole documents
        assert mix["experimental_tokens"] >= 30000 and mix["base_tokens"] >= 30000
        # packed once into the token shards every run of the recipe streams: the mixture's tokens, but
        # for each source's last partial sequence
        index = StageOutput.at(f"file://{prep1}/recipes/{recipe}/train").read_tokens_index()
        packed = index.sequences * index.seq_len
        mixed = mix["experimental_tokens"] + mix["base_tokens"]
        assert index.sequences == mix["train_sequences"] and mixed - 8 * index.seq_len < packed <= mixed
