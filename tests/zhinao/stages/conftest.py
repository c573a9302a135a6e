"""The pretrain spec the stage tests run (their corpus and tokenizer: `stage_assets` in tests/zhinao/conftest.py)."""

import json

import pytest


def pretrain_spec(name: str, storage_uri: str, assets: dict, *, replicas: int = 2, nproc: int = 1, **params) -> str:
    merged = {
        "seqLen": 64,
        "microBatchSize": 4,
        "maxSteps": 30,
        "warmupSteps": 3,
        "checkpointEvery": 10,
        "lr": 3e-3,
        **params,
    }
    return json.dumps(
        {
            "apiVersion": "zhinao.ai/v1alpha1",
            "kind": "TrainingPipeline",
            "metadata": {"name": name},
            "spec": {
                "storage": {"uri": storage_uri},
                "stages": [
                    {
                        "name": "pretrain",
                        "kind": "pretrain",
                        "replicas": replicas,
                        "nprocPerNode": nproc,
                        "backoffLimit": 6,  # a lost rank costs a restart per pod (Kubeflow counts containers)
                        "inputs": {"tokenizer": assets["tokenizer"], "corpus": assets["corpus"]},
                        "params": merged,
                    }
                ],
            },
        }
    )


@pytest.fixture
def make_pretrain_spec():
    return pretrain_spec
