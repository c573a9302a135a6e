"""`TrainingPipeline` (zhinao.ai/v1alpha1): the one document users write.

The same models validate `zhinao-k8s` input, generate the operator's CRD schema and the Helm
values schema, so a spec accepted here is accepted everywhere.
"""

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from zhinao.config._base import SpecModel
from zhinao.config.data import DataParams
from zhinao.config.longctx import LongContextParams
from zhinao.config.pretrain import PretrainParams
from zhinao.config.reward import RewardParams
from zhinao.config.rlhf import RLHFParams
from zhinao.config.sft import SFTParams
from zhinao.config.tokenizer import TokenizerParams
from zhinao_k8s.api.policy import RetryPolicy

GROUP = "zhinao.ai"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainingPipeline"

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
URI = re.compile(r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|file://.+|stage://[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")
DEFAULT_IMAGE = "ghcr.io/zhinao-k8s/trainer:0.1.0"


class Metadata(SpecModel):
    name: str = Field(max_length=40)
    """DNS label; child PyTorchJobs are named `<name>-<stage>` and must fit 63 characters."""

    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if not DNS_LABEL.match(v):
            raise ValueError("must be a DNS label (lowercase letters, digits and '-')")
        return v


class SecretRef(SpecModel):
    name: str
    """Name of a Kubernetes Secret in the pipeline's namespace."""

    access_key_id_key: str = "AWS_ACCESS_KEY_ID"
    """Key in the Secret holding the access key id."""

    secret_access_key_key: str = "AWS_SECRET_ACCESS_KEY"
    """Key in the Secret holding the secret access key."""


class Credentials(SpecModel):
    secret_ref: SecretRef
    """Credentials are only ever referenced, never written into a spec."""


class Storage(SpecModel):
    uri: str = "file://./runs"
    """Root under which each stage writes `<uri>/<pipeline>/<stage>/` unless it sets `output`."""

    endpoint: str | None = None
    """S3 endpoint URL (for example http://minio.minio:9000); required for s3:// URIs."""

    region: str | None = None
    credentials: Credentials | None = None

    @field_validator("uri")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not (v.startswith("s3://") or v.startswith("file://")):
            raise ValueError("must start with s3:// or file://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _s3_needs_endpoint(self) -> "Storage":
        if self.uri.startswith("s3://") and not self.endpoint:
            raise ValueError("endpoint is required when uri is s3://")
        return self


class Resources(SpecModel):
    cpu: str = "2"
    """CPU request and limit per replica (Kubernetes quantity)."""

    memory: str = "8Gi"
    """Memory request and limit per replica (Kubernetes quantity)."""

    gpu: int = Field(default=0, ge=0, le=16)
    """`nvidia.com/gpu` per replica; usually equal to nprocPerNode."""

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, v: str) -> str:
        if not QUANTITY.match(str(v)):
            raise ValueError(f"{v!r} is not a Kubernetes quantity")
        return str(v)


class Metrics(SpecModel):
    enabled: bool = True
    port: int = Field(default=9400, ge=1024, le=65535)
    """Each process serves /metrics on port + LOCAL_RANK."""


class StageBase(SpecModel):
    name: str = Field(max_length=20)
    """DNS label unique within the pipeline."""

    replicas: int = Field(default=1, ge=1, le=1024)
    """Pods: one Master plus replicas-1 Workers."""

    nproc_per_node: int = Field(default=1, ge=1, le=64)
    """Processes per pod (torchrun --nproc-per-node); usually the GPU count."""

    resources: Resources = Field(default_factory=Resources)
    backoff_limit: int = Field(default=3, ge=0, le=100)
    """The PyTorchJob's `runPolicy.backoffLimit` (Kubeflow v1.9 semantics): with restartPolicy
    OnFailure a failed container is restarted in place, and the job is Failed once the container
    restarts summed over all its pods reach this number (0: at the first failure). One lost node
    usually costs one restart per pod, as the other ranks fail with it: give a job of N pods at
    least N per incident it should survive."""

    restart_policy: Literal["OnFailure", "ExitCode"] = "OnFailure"
    """`OnFailure`: restart a failed container in place, counted against backoffLimit. `ExitCode`:
    recreate a pod whose exit code is retryable (130, 137, 143: killed by SIGINT, SIGKILL -- OOM or a
    lost node --, SIGTERM; 138: SIGUSR1, a user-defined retry) without counting it against
    backoffLimit, and fail the job at once on any other code (a bug or bad input does not repeat)."""

    image: str | None = None
    """Overrides the pipeline image for this stage."""

    inputs: dict[str, str] = Field(default_factory=dict)
    """Named inputs: s3:// or file:// URIs, or stage://<name> for another stage's output."""

    output: str | None = None
    """Where this stage writes; default `<storage.uri>/<pipeline>/<stage>`."""

    @field_validator("name")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if not DNS_LABEL.match(v):
            raise ValueError("must be a DNS label (lowercase letters, digits and '-')")
        return v

    @field_validator("inputs")
    @classmethod
    def _input_uris(cls, v: dict[str, str]) -> dict[str, str]:
        for key, uri in v.items():
            if not URI.match(uri):
                raise ValueError(f"input {key!r}: {uri!r} is not an s3://, file:// or stage:// URI")
        return v


class DataStage(StageBase):
    kind: Literal["data"]
    params: DataParams = Field(default_factory=DataParams)


class TokenizerStage(StageBase):
    kind: Literal["tokenizer"]
    params: TokenizerParams = Field(default_factory=TokenizerParams)


class PretrainStage(StageBase):
    kind: Literal["pretrain"]
    params: PretrainParams = Field(default_factory=PretrainParams)


class LongContextStage(StageBase):
    kind: Literal["longctx"]
    params: LongContextParams = Field(default_factory=LongContextParams)


class SFTStage(StageBase):
    kind: Literal["sft"]
    params: SFTParams = Field(default_factory=SFTParams)


class RewardStage(StageBase):
    kind: Literal["reward"]
    params: RewardParams = Field(default_factory=RewardParams)


class RLHFStage(StageBase):
    kind: Literal["rlhf"]
    params: RLHFParams = Field(default_factory=RLHFParams)


Stage = Annotated[
    DataStage | TokenizerStage | PretrainStage | LongContextStage | SFTStage | RewardStage | RLHFStage,
    Field(discriminator="kind"),
]
STAGE_KINDS = ("data", "tokenizer", "pretrain", "longctx", "sft", "reward", "rlhf")


class PipelineSpec(SpecModel):
    image: str = DEFAULT_IMAGE
    """Trainer image (images/trainer) every stage runs unless it sets its own."""

    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    storage: Storage = Field(default_factory=Storage)
    metrics: Metrics = Field(default_factory=Metrics)
    stages: list[Stage] = Field(min_length=1)
    """Run in order; each starts when the previous one has Succeeded."""

    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)
    suspend: bool = False
    """True pauses the pipeline: the running stage's PyTorchJob is suspended and no new stage starts."""

    @model_validator(mode="after")
    def _stage_references(self) -> "PipelineSpec":
        seen: list[str] = []
        for stage in self.stages:
            if stage.name in seen:
                raise ValueError(f"stage name {stage.name!r} is used twice")
            for key, uri in stage.inputs.items():
                if uri.startswith("stage://") and uri[len("stage://") :] not in seen:
                    raise ValueError(
                        f"stage {stage.name!r} input {key!r} refers to {uri!r}, which is not an earlier stage"
                    )
            seen.append(stage.name)
        return self


class TrainingPipeline(SpecModel):
    api_version: Literal["zhinao.ai/v1alpha1"] = API_VERSION
    kind: Literal["TrainingPipeline"] = KIND
    metadata: Metadata
    spec: PipelineSpec

    def stage(self, name: str) -> Stage:
        for s in self.spec.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def output_of(self, stage: StageBase) -> str:
        return stage.output or f"{self.spec.storage.uri}/{self.metadata.name}/{stage.name}"

    def resolve_inputs(self, stage: StageBase) -> dict[str, str]:
        """stage://<name> references replaced by that stage's output URI."""
        return {
            key: self.output_of(self.stage(uri[len("stage://") :])) if uri.startswith("stage://") else uri
            for key, uri in stage.inputs.items()
        }
