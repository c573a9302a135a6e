"""Real assets shared by the stage tests (tests/zhinao/stages) and the long-context tests (tests/zhinao/longctx):
a docstring corpus, a BPE tokenizer trained on it, and a tiny model as a pretrain stage would leave it."""

import importlib
import inspect
import json
import shutil
from pathlib import Path

import pytest

from zhinao.model import build_config, build_model
from zhinao.tokenizer import load as load_tokenizer
from zhinao.tokenizer import to_transformers, train_bpe

MODULES = [
    "json",
    "os",
    "re",
    "collections",
    "itertools",
    "functools",
    "pathlib",
    "subprocess",
    "threading",
    "logging",
    "argparse",
    "datetime",
    "decimal",
    "random",
    "textwrap",
    "typing",
    "zipfile",
    "csv",
]


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


@pytest.fixture(scope="session")
def longctx_base_model(stage_assets, tmp_path_factory) -> str:
    """What a pretrain stage leaves for longctx: <prefix>/hf/ with a tiny model (rope base 10000) and its tokenizer."""
    hf = tmp_path_factory.mktemp("pretrained") / "hf"
    tokenizer_dir = Path(stage_assets["tokenizer"].removeprefix("file://"))
    tokenizer = load_tokenizer(tokenizer_dir)
    build_model(build_config("tiny", vocab_size=len(tokenizer), attention="sdpa"), seed=7).save_pretrained(hf)
    for path in tokenizer_dir.iterdir():
        shutil.copy(path, hf / path.name)
    return f"file://{hf.parent}"


def longctx_spec(
    name: str,
    storage: str,
    model: str,
    corpus: str,
    *,
    replicas: int = 1,
    nproc: int = 2,
    backoff_limit: int = 0,
    **params,
) -> str:
    """A one-stage pipeline: longctx on 2 ranks (one process each of `replicas` pods) that split every sequence."""
    merged = {
        "seqLen": 256,
        "sequenceParallel": 2,
        "microBatchSize": 2,
        "maxSteps": 6,
        "warmupSteps": 1,
        "checkpointEvery": 3,
        "lr": 3e-3,
        "syntheticMix": 0.25,
        "syntheticSamples": 6,
        "syntheticQuestions": 2,
        "needle": {"lengths": [160, 256], "numDepths": 3, "maxNewTokens": 6},
        **params,
    }
    return json.dumps(
        {
            "apiVersion": "zhinao.ai/v1alpha1",
            "kind": "TrainingPipeline",
            "metadata": {"name": name},
            "spec": {
                "storage": {"uri": storage},
                "stages": [
                    {
                        "name": "longctx",
                        "kind": "longctx",
                        "replicas": replicas,
                        "nprocPerNode": nproc,
                        "backoffLimit": backoff_limit,
                        "inputs": {"model": model, "corpus": corpus},
                        "params": merged,
                    }
                ],
            },
        }
    )


@pytest.fixture
def make_longctx_spec():
    return longctx_spec
