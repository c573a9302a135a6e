"""Small real assets for stage tests: a docstring corpus and a BPE tokenizer trained on it."""

import inspect
import importlib
import json
from pathlib import Path

import pytest

from zhinao.tokenizer import to_transformers, train_bpe

MODULES = ["json", "os", "re", "collections", "itertools", "functools", "pathlib", "subprocess", "threading",
           "logging", "argparse", "datetime", "decimal", "random", "textwrap", "typing", "zipfile", "csv"]


def docstring_corpus() -> list[dict]:
    docs = []
    for name in MODULES:
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 150:
                docs.append({"text": doc, "source": "code" if "(" in doc[:60] else "webpages"})
    return docs


@pytest.fixture(scope="session")
def stage_assets(tmp_path_factory) -> dict[str, str]:
    """file:// URIs of a corpus prefix and a tokenizer prefix."""
    root = tmp_path_factory.mktemp("assets")
    docs = docstring_corpus()
    (root / "corpus").mkdir()
    (root / "corpus" / "part-00000.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    to_transformers(train_bpe((d["text"] for d in docs), vocab_size=1024)).save_pretrained(root / "tokenizer")
    return {"corpus": f"file://{root / 'corpus'}", "tokenizer": f"file://{root / 'tokenizer'}", "root": str(root)}


def pretrain_spec(name: str, storage_uri: str, assets: dict, *, replicas: int = 2, nproc: int = 1, **params) -> str:
    merged = {"seqLen": 64, "microBatchSize": 4, "maxSteps": 30, "warmupSteps": 3, "checkpointEvery": 10,
              "lr": 3e-3, **params}
    return json.dumps({
        "apiVersion": "zhinao.ai/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": name},
        "spec": {"storage": {"uri": storage_uri}, "stages": [{
            "name": "pretrain", "kind": "pretrain", "replicas": replicas, "nprocPerNode": nproc, "backoffLimit": 2,
            "inputs": {"tokenizer": assets["tokenizer"], "corpus": assets["corpus"]}, "params": merged}]},
    })


@pytest.fixture
def make_pretrain_spec():
    return pretrain_spec
