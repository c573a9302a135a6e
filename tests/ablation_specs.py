"""Spec blocks the ablation tests share."""


def cpu_proxy(*, tokens: int, seq_len: int, micro_batch: int, memory: str = "1Gi", **overrides) -> dict:
    """The `proxy` block of an Ablation whose runs train the tiny model on one CPU process each."""
    return {
        "modelSize": "tiny",
        "tokens": tokens,
        "seqLen": seq_len,
        "microBatchSize": micro_batch,
        "gradAccumSteps": 1,
        "replicas": 1,
        "nprocPerNode": 1,
        "gpu": 0,
        "cpu": "1",
        "memory": memory,
        "warmupSteps": 2,
        **overrides,
    }
