"""An Ablation expanded into TrainingPipelines with deterministic names: its data pipeline and its runs.

Pure. Also where an ablation writes: `root_uri`, `prep_uri`, `report_uri`.

The data pipeline `<ablation>-data` has one data stage per corpus to process (the base corpus when
`base.data` is set, every recipe with `data`): a distributed PyTorchJob of `dataJobs.replicas` ranks
each, writing under prep/ where zhinao.ablation.prepare reads it (`AblationParams.processed`).

Every run has a pretrain stage reading the ablation's prepared data (prep/: the shared tokenizer,
the token shards of the recipe's mixture and the held-out sequences, see zhinao.ablation.prepare). It
records the validation loss every `validLoss.everySteps` steps in its metrics log, and keeps only
its latest checkpoint (to resume): the evaluation reads the log and the final hf/ export. With the SFT evaluation
on, an `sft` stage follows: the same fixed recipe fine-tunes every run's base (with the run's seed).
"""

from dataclasses import dataclass

from zhinao.config.ablation import BASE_DATA
from zhinao.config.pretrain import PretrainParams
from zhinao_k8s.api.ablation import Ablation
from zhinao_k8s.api.v1alpha1 import (
    DataStage,
    Metadata,
    PipelineSpec,
    PretrainStage,
    Resources,
    SFTStage,
    TrainingPipeline,
)
from zhinao_k8s.render.names import LABEL_ABLATION, LABEL_ABLATION_STEP, LABEL_RECIPE, LABEL_SEED

STAGE = "pretrain"
SFT_STAGE = "sft"
REPORT_FILE = "report/report.md"


@dataclass(frozen=True)
class Run:
    recipe: str
    index: int
    """0-based seed index within the recipe (the `s<k>` of the name)."""
    seed: int
    pipeline: TrainingPipeline

    @property
    def name(self) -> str:
        return self.pipeline.metadata.name

    @property
    def output(self) -> str:
        return self.pipeline.output_of(self.pipeline.stage(STAGE))

    @property
    def sft_output(self) -> str | None:
        stages = [s for s in self.pipeline.spec.stages if s.name == SFT_STAGE]
        return self.pipeline.output_of(stages[0]) if stages else None


def root_uri(ablation: Ablation) -> str:
    return f"{ablation.spec.storage.uri}/{ablation.metadata.name}"


def prep_uri(ablation: Ablation) -> str:
    return f"{root_uri(ablation)}/prep"


def report_uri(ablation: Ablation) -> str:
    """The ablation report's report.md (report.json is beside it)."""
    return f"{root_uri(ablation)}/{REPORT_FILE}"


def data_pipeline_name(ablation: Ablation) -> str:
    return f"{ablation.metadata.name}-data"


def data_stage_name(prefix: str) -> str:
    """`base`, or `recipe-<name>` for `recipes/<name>/data` (a recipe may be called `base`)."""
    return "base" if prefix == BASE_DATA else "recipe-" + prefix.split("/")[1]


def data_pipeline(ablation: Ablation) -> TrainingPipeline | None:
    """The data stages of the ablation in one pipeline (they run side by side); None when no corpus
    needs processing (every recipe a prepared dataset, the base used as is)."""
    spec = ablation.spec
    jobs = spec.processed()
    if not jobs:
        return None
    prep = prep_uri(ablation)
    resources = Resources(cpu=spec.data_jobs.cpu, memory=spec.data_jobs.memory)
    stages = [
        DataStage(
            name=data_stage_name(prefix),
            kind="data",
            replicas=spec.data_jobs.replicas,
            nproc_per_node=1,
            resources=resources,
            inputs={"corpus": corpus},
            output=f"{prep}/{prefix}",
            params=params,
        )
        for prefix, (params, corpus) in jobs.items()
    ]
    labels = {**ablation.metadata.labels, LABEL_ABLATION: ablation.metadata.name, LABEL_ABLATION_STEP: "data"}
    return TrainingPipeline(
        metadata=Metadata(name=data_pipeline_name(ablation), namespace=ablation.metadata.namespace, labels=labels),
        spec=PipelineSpec(
            image=spec.image,
            image_pull_policy=spec.image_pull_policy,
            storage=spec.storage,
            metrics=spec.metrics,
            stages=stages,
        ),
    )


def run_name(ablation: Ablation, recipe: str, index: int) -> str:
    return f"{ablation.metadata.name}-{recipe}-s{index}"


def pretrain_params(ablation: Ablation, seed: int) -> PretrainParams:
    proxy = ablation.spec.proxy
    every = ablation.spec.evaluations.valid_loss.every_steps
    return PretrainParams(
        model_size=proxy.model_size,
        seq_len=proxy.seq_len,
        micro_batch_size=proxy.micro_batch_size,
        grad_accum_steps=proxy.grad_accum_steps,
        max_steps=proxy.max_steps,
        lr=proxy.lr,
        warmup_steps=proxy.warmup_steps,
        seed=seed,
        checkpoint_every=every,
        keep_checkpoints=1,  # only to resume: the validation loss is computed in the loop
        eval_every=every,
    )


def expand_runs(ablation: Ablation) -> list[Run]:
    """recipes x seeds -> one Run (a TrainingPipeline) each, in recipe order then seed order."""
    spec = ablation.spec
    proxy, sft, valid = spec.proxy, spec.evaluations.sft, spec.evaluations.valid_loss
    prep = prep_uri(ablation)
    placement = {
        "replicas": proxy.replicas,
        "nproc_per_node": proxy.nproc_per_node,
        "resources": Resources(cpu=proxy.cpu, memory=proxy.memory, gpu=proxy.gpu),
    }
    runs = []
    for r_index, recipe in enumerate(spec.recipes):
        for k in range(spec.seeds):
            seed = spec.run_seed(r_index, k)
            stages = [
                PretrainStage(
                    name=STAGE,
                    kind="pretrain",
                    **placement,
                    inputs={
                        "tokenizer": f"{prep}/tokenizer",
                        # Token shards the preparation packed once per recipe: no run tokenizes.
                        "tokens": f"{prep}/recipes/{recipe.name}/train",
                        **({"valid": f"{prep}/valid"} if valid.enabled else {}),
                    },
                    params=pretrain_params(ablation, seed),
                )
            ]
            if sft.enabled:
                stages.append(
                    SFTStage(
                        name=SFT_STAGE,
                        kind="sft",
                        **placement,
                        inputs={"model": f"stage://{STAGE}", "data": sft.data_uri(prep)},
                        params=sft.params.model_copy(update={"seed": seed}),
                    )
                )
            labels = {
                **ablation.metadata.labels,
                LABEL_ABLATION: ablation.metadata.name,
                LABEL_RECIPE: recipe.name,
                LABEL_SEED: str(k),
            }
            pipeline = TrainingPipeline(
                metadata=Metadata(
                    name=run_name(ablation, recipe.name, k), namespace=ablation.metadata.namespace, labels=labels
                ),
                spec=PipelineSpec(
                    image=spec.image,
                    image_pull_policy=spec.image_pull_policy,
                    storage=spec.storage,
                    metrics=spec.metrics,
                    stages=stages,
                ),
            )
            runs.append(Run(recipe.name, k, seed, pipeline))
    return runs
