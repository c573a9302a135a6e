"""Run-control fields of a TrainingPipeline: how failures are retried and how a run is paused.

Kept apart from the stage models so the operator's knobs can grow without touching them.
"""

from pydantic import Field

from zhinao.config._base import SpecModel


class RetryPolicy(SpecModel):
    max_retries: int = Field(default=1, ge=0, le=20)
    """Times a Failed stage is run again (its PyTorchJob deleted and created anew) before the pipeline is Failed.

    This is on top of the stage's `backoffLimit`, which restarts pods inside one PyTorchJob; a retry
    starts a fresh job, so it also recovers from failures the training operator will not restart
    (for example a non-retryable exit code, kubeflow/trainer#2044).
    """
