"""One step of every stage kind in bf16, end to end: `make gpu-check`'s proof that no stage crashes.

A pipeline of every kind (data, tokenizer, pretrain, longctx, SFT, reward, RLHF with PPO: policy,
reference, reward model and critic at once) on the demo's corpus and alignment data, the tiny model,
one optimizer step each, `precision: bf16` everywhere (rollouts and the frozen models included).
Each stage is a PyTorchJob run by the local runner, so it is the very process a cluster runs, on
the GPU when there is one. data and tokenizer have no GPU path; they run to feed the others.
"""

import tempfile
from pathlib import Path

from zhinao.config.kinds import KIND_NAMES
from zhinao.data.demo_corpus import build_demo_corpus
from zhinao.synthetic import write_demo_alignment_data
from zhinao_k8s.api.v1alpha1 import TrainingPipeline
from zhinao_k8s.runner.local import JobResult
from zhinao_k8s.runner.pipeline import run_training_pipeline

ONE_STEP = {"maxSteps": 1, "checkpointEvery": 1, "precision": "bf16"}
"""Every training stage: one optimizer step, saved and exported, in bf16."""


def every_kind(store: str, alignment: dict[str, str]) -> TrainingPipeline:
    stages = [
        {"name": "data", "kind": "data", "inputs": {"corpus": f"{store}/corpus"}},
        {"name": "tokenizer", "kind": "tokenizer", "inputs": {"corpus": "stage://data"}, "params": {"vocabSize": 512}},
        {
            "name": "pretrain",
            "kind": "pretrain",
            "inputs": {"tokenizer": "stage://tokenizer", "corpus": "stage://data"},
            "params": {**ONE_STEP, "modelSize": "tiny", "seqLen": 64, "microBatchSize": 2, "warmupSteps": 0},
        },
        {
            "name": "longctx",
            "kind": "longctx",
            "inputs": {"model": "stage://pretrain", "corpus": "stage://data"},
            "params": {
                **ONE_STEP,
                "seqLen": 256,
                "microBatchSize": 1,
                "warmupSteps": 0,
                "needle": {"lengths": [224], "numDepths": 1, "maxNewTokens": 2},
            },
        },
        {
            "name": "sft",
            "kind": "sft",
            "inputs": {"model": "stage://pretrain", "data": alignment["sft"]},
            "params": {**ONE_STEP, "maxLen": 64, "microBatchSize": 4, "dedup": False},
        },
        {
            "name": "rm",
            "kind": "reward",
            "inputs": {"model": "stage://sft", "preferences": alignment["preferences"]},
            "params": {**ONE_STEP, "maxLen": 64, "microBatchSize": 4},
        },
        {
            "name": "rlhf",
            "kind": "rlhf",
            "inputs": {
                "policy": "stage://sft",
                "reward": "stage://rm",
                "prompts": alignment["prompts"],
                "evalPrompts": alignment["evalPrompts"],
            },
            "params": {
                **ONE_STEP,
                "algorithm": "ppo",
                "microBatchSize": 4,
                "maxNewTokens": 4,
                "rolloutPrecision": "bf16",
                "referencePrecision": "bf16",
                "rules": {"arithmetic": 1.0},
                "evalPrompts": 4,
                "evalSamples": 1,
            },
        },
    ]
    for stage in stages:
        stage["backoffLimit"] = 0  # a crash is the answer: no restart
    doc = {"metadata": {"name": "gpu-check"}, "spec": {"storage": {"uri": store}, "stages": stages}}
    return TrainingPipeline.model_validate(doc)


def verdicts(pipeline: TrainingPipeline, ran: list[tuple[str, JobResult]]) -> tuple[dict[str, str], bool]:
    """{kind: "ok" | "failed: <reason>" | "not run: <stage> failed first"} in kind order, and whether
    all are ok. `ran`: the stages the runner ran, in order (it stops at the first that fails)."""
    kinds = {s.name: s.kind for s in pipeline.spec.stages}
    said = {kinds[name]: "ok" if job.succeeded else f"failed: {job.reason or 'no reason'}" for name, job in ran}
    first = next((name for name, job in ran if not job.succeeded), None)
    out = {kind: said.get(kind, f"not run: {first} failed first") for kind in KIND_NAMES}
    return out, all(v == "ok" for v in out.values())


def stage_steps(workdir: Path | None = None) -> tuple[dict[str, str], bool]:
    """Build the data, run `every_kind` with the local runner: `verdicts`."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="gpu-check-stages-"))
    store = f"file://{(workdir / 'store').resolve()}"
    build_demo_corpus(store, n_docs=200)
    alignment = write_demo_alignment_data(store, sft_examples=64)
    pipeline = every_kind(store, alignment)
    return verdicts(pipeline, run_training_pipeline(pipeline, workdir=workdir).stages)
