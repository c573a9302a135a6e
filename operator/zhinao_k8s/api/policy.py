"""Run-control fields of a TrainingPipeline: how a Failed stage is retried (`spec.suspend`, the
other run control, is a plain field of PipelineSpec).

Kept apart from the stage models so the operator's knobs can grow without touching them.
"""

from pydantic import Field

from zhinao.config._base import SpecModel


class RetryPolicy(SpecModel):
    max_retries: int = Field(default=1, ge=0, le=20)
    """Times a Failed stage is run again before the pipeline is Failed.

    A stage's PyTorchJob is Failed once its container restarts, summed over its pods, reach the
    stage's `backoffLimit` (or at a permanent exit code under restartPolicy ExitCode). The operator
    then deletes the job with foreground propagation and, once the object (and so its pods and
    Services) is gone, creates it anew under the same name with the next attempt number
    (annotation `zhinao.ai/attempt`) and a fresh `backoffLimit`. So a stage runs at most
    1 + maxRetries PyTorchJobs; the local runner (`zhinao-k8s run`) does not retry.
    """
