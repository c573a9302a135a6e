"""Deterministic names and labels of the objects a TrainingPipeline or an Ablation owns."""

from zhinao_k8s.api import rules
from zhinao_k8s.api.v1alpha1 import StageBase, TrainingPipeline

LABEL_PIPELINE = "zhinao.ai/pipeline"
LABEL_STAGE = "zhinao.ai/stage"
LABEL_KIND = "zhinao.ai/stage-kind"
LABEL_ABLATION = "zhinao.ai/ablation"
"""On an Ablation's runs (TrainingPipelines) and its prepare/evaluate PyTorchJobs."""
LABEL_ABLATION_STEP = "zhinao.ai/ablation-step"
"""Which step of an Ablation an object serves: data (its data pipeline), prepare, evaluate."""
LABEL_RECIPE = "zhinao.ai/recipe"
LABEL_SEED = "zhinao.ai/seed"


def job_name(pipeline: TrainingPipeline, stage: StageBase) -> str:
    """`<pipeline>-<stage>`; the models check that its replicas' Service names fit 63 characters."""
    return rules.job_name(pipeline.metadata.name, stage.name)


def app_labels(component: str) -> dict[str, str]:
    """The recommended `app.kubernetes.io/*` labels of every trainer job and pod."""
    return {
        "app.kubernetes.io/name": "zhinao-trainer",
        "app.kubernetes.io/part-of": "zhinao-k8s",
        "app.kubernetes.io/managed-by": "zhinao-k8s",
        "app.kubernetes.io/component": component,
    }


def labels(pipeline: TrainingPipeline, stage: StageBase) -> dict[str, str]:
    return {
        **app_labels(stage.kind),
        LABEL_PIPELINE: pipeline.metadata.name,
        LABEL_STAGE: stage.name,
        LABEL_KIND: stage.kind,
    }
