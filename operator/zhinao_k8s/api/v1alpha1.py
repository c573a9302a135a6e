"""`TrainingPipeline` (zhinao.ai/v1alpha1): the one document users write.

The same models validate `zhinao-k8s` input, generate the operator's CRD schema and the Helm
values schema, so a spec accepted here is accepted everywhere.
"""

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from zhinao.config._base import FieldErrors, SpecModel
from zhinao.config.data import DataParams
from zhinao.config.kinds import KIND_NAMES
from zhinao.config.longctx import LongContextParams
from zhinao.config.pretrain import PretrainParams
from zhinao.config.reward import RewardParams
from zhinao.config.rlhf import RLHFParams
from zhinao.config.sft import SFTParams
from zhinao.config.tokenizer import TokenizerParams
from zhinao_k8s.api import rules
from zhinao_k8s.api.policy import RetryPolicy
from zhinao_k8s.api.scheduling import Scheduling, effective_scheduling

GROUP = "zhinao.ai"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainingPipeline"

DEFAULT_IMAGE = "ghcr.io/zhinao-k8s/trainer:0.1.0"


class Metadata(SpecModel):
    name: str = Field(max_length=rules.MAX_PIPELINE_NAME, pattern=rules.DNS_1035_LABEL)
    """DNS-1035 label; child PyTorchJobs are named `<name>-<stage>` and their replicas'
    Services `<name>-<stage>-worker-<i>`, which must fit 63 characters."""

    namespace: str | None = Field(default=None, max_length=rules.MAX_LABEL, pattern=rules.DNS_1123_LABEL)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        problems = [(key, reason) for key, value in v.items() if (reason := rules.label_problem(key, value))]
        if problems:
            raise FieldErrors(problems)
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
    def _uri(cls, v: str) -> str:
        if problem := rules.uri_problem(v):
            raise ValueError(problem)
        return v.rstrip("/")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and (problem := rules.endpoint_problem(v)):
            raise ValueError(problem)
        return v

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

    gpu_memory: str = "80G"
    """Memory of one GPU (Kubernetes quantity; default an 80 GB H100). `validate` refuses a stage
    whose planned per-GPU peak does not fit (`zhinao-k8s plan`)."""

    @field_validator("cpu", "memory", "gpu_memory")
    @classmethod
    def _quantity(cls, v: str) -> str:
        if problem := rules.quantity_problem(v):
            raise ValueError(problem)
        return v


class Metrics(SpecModel):
    enabled: bool = True
    port: int = Field(default=9400, ge=1024, le=65535)
    """Each process serves /metrics on port + LOCAL_RANK."""


class StageBase(SpecModel):
    INPUTS: ClassVar[tuple[str, ...]] = ()
    """The input names this kind reads; any other name is a typo."""

    name: str = Field(max_length=rules.MAX_STAGE_NAME, pattern=rules.DNS_1123_LABEL)
    """DNS-1123 label unique within the pipeline."""

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

    image: str | None = Field(default=None, pattern=rules.IMAGE_REFERENCE)
    """Overrides the pipeline image for this stage."""

    inputs: dict[str, Annotated[str, Field(max_length=rules.MAX_URI)]] = Field(
        default_factory=dict, max_length=rules.MAX_INPUTS
    )
    """Named inputs: s3:// or file:// URIs, or stage://<name> for another stage's output."""

    output: str | None = Field(default=None, max_length=rules.MAX_URI)
    """Where this stage writes; default `<storage.uri>/<pipeline>/<stage>`."""

    scheduling: Scheduling | None = None
    """Overrides `spec.scheduling` field by field for this stage's pods (api/scheduling.py)."""

    @field_validator("inputs")
    @classmethod
    def _input_uris(cls, v: dict[str, str]) -> dict[str, str]:
        problems = [(key, reason) for key, uri in v.items() if (reason := rules.uri_problem(uri, INPUT_SCHEMES))]
        if problems:
            raise FieldErrors(problems)
        return v

    @field_validator("output")
    @classmethod
    def _output_uri(cls, v: str | None) -> str | None:
        if v is not None and (problem := rules.uri_problem(v)):
            raise ValueError(problem)
        return v.rstrip("/") if v else v

    def required_inputs(self) -> list[tuple[str, ...]]:
        """Groups of input names; the stage needs at least one name of every group."""
        return [(name,) for name in self.INPUTS]

    @model_validator(mode="after")
    def _inputs_known_and_present(self) -> "StageBase":
        problems = [
            (f"inputs.{key}", f"a {self.kind} stage has no input {key!r}; it reads {', '.join(self.INPUTS)}")
            for key in self.inputs
            if key not in self.INPUTS
        ]
        problems += [
            ("inputs", f"a {self.kind} stage needs input " + " or ".join(repr(n) for n in group))
            for group in self.required_inputs()
            if not any(n in self.inputs for n in group)
        ]
        if problems:
            raise FieldErrors(problems)
        return self


INPUT_SCHEMES = ("s3", "file", "stage")


class DataStage(StageBase):
    INPUTS = ("corpus",)
    kind: Literal["data"]
    params: DataParams = Field(default_factory=DataParams)


class TokenizerStage(StageBase):
    INPUTS = ("corpus",)
    kind: Literal["tokenizer"]
    params: TokenizerParams = Field(default_factory=TokenizerParams)


class PretrainStage(StageBase):
    INPUTS = ("tokenizer", "corpus", "tokens", "valid")
    kind: Literal["pretrain"]
    params: PretrainParams = Field(default_factory=PretrainParams)

    def required_inputs(self) -> list[tuple[str, ...]]:
        # corpus or tokens may be left out when the output already holds packed tokens (a rerun).
        return [("tokenizer",)]


class LongContextStage(StageBase):
    INPUTS = ("model", "corpus")
    kind: Literal["longctx"]
    params: LongContextParams = Field(default_factory=LongContextParams)

    @model_validator(mode="after")
    def _sequence_parallel_divides_world(self) -> "LongContextStage":
        world = self.replicas * self.nproc_per_node
        if world % self.params.sequence_parallel:
            raise FieldErrors(
                [
                    (
                        "params.sequenceParallel",
                        f"must divide the world size replicas x nprocPerNode = {world} "
                        f"(is {self.params.sequence_parallel})",
                    )
                ]
            )
        return self


class SFTStage(StageBase):
    INPUTS = ("model", "data")
    kind: Literal["sft"]
    params: SFTParams = Field(default_factory=SFTParams)


class RewardStage(StageBase):
    INPUTS = ("model", "preferences")
    kind: Literal["reward"]
    params: RewardParams = Field(default_factory=RewardParams)


class RLHFStage(StageBase):
    INPUTS = ("policy", "reward", "prompts", "evalPrompts", "preferences")
    kind: Literal["rlhf"]
    params: RLHFParams = Field(default_factory=RLHFParams)

    def required_inputs(self) -> list[tuple[str, ...]]:
        if self.params.algorithm in ("dpo", "orpo"):
            return [("policy",), ("preferences",)]
        return [("policy",), ("prompts",)] + ([("reward",)] if self.params.rm_weight > 0 else [])


Stage = Annotated[
    DataStage | TokenizerStage | PretrainStage | LongContextStage | SFTStage | RewardStage | RLHFStage,
    Field(discriminator="kind"),
]
STAGE_CLASSES = (DataStage, TokenizerStage, PretrainStage, LongContextStage, SFTStage, RewardStage, RLHFStage)
STAGE_KINDS = KIND_NAMES
"""The kinds registered in zhinao.config.kinds; tests/test_stage_kinds.py checks STAGE_CLASSES match them."""


class PipelineSpec(SpecModel):
    image: str = Field(default=DEFAULT_IMAGE, pattern=rules.IMAGE_REFERENCE)
    """Trainer image (images/trainer) every stage runs unless it sets its own."""

    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    storage: Storage = Field(default_factory=Storage)
    metrics: Metrics = Field(default_factory=Metrics)
    stages: list[Stage] = Field(min_length=1, max_length=rules.MAX_STAGES)
    """Run in order; each starts when the previous one has Succeeded."""

    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    """Every stage's node pool, tolerations, queue, gang scheduling, pull secrets and ServiceAccount,
    unless the stage sets its own (api/scheduling.py)."""

    suspend: bool = False
    """True pauses the pipeline: the running stage's PyTorchJob is suspended and no new stage starts."""

    memory_plan: bool = True
    """Before the PyTorchJob of a stage that asks for GPUs, the operator runs its memory plan in a
    CPU-only Job of the trainer image (`zhinao-k8s plan`) and fails the stage, naming the numbers,
    if one step cannot fit its GPUs. False skips the plan (as `zhinao-k8s validate --no-plan`)."""

    @model_validator(mode="after")
    def _stage_references(self) -> "PipelineSpec":
        seen: list[str] = []
        problems = []
        for i, stage in enumerate(self.stages):
            if stage.name in seen:
                problems.append((f"stages[{i}].name", f"{stage.name!r} is already stages[{seen.index(stage.name)}]"))
            for key, uri in stage.inputs.items():
                if uri.startswith("stage://") and uri[len("stage://") :] not in seen:
                    problems.append((f"stages[{i}].inputs.{key}", f"{uri!r} is not an earlier stage"))
            seen.append(stage.name)
        if problems:
            raise FieldErrors(problems)
        return self


class TrainingPipeline(SpecModel):
    api_version: Literal["zhinao.ai/v1alpha1"] = API_VERSION
    kind: Literal["TrainingPipeline"] = KIND
    metadata: Metadata
    spec: PipelineSpec

    @model_validator(mode="after")
    def _derived_names_and_outputs(self) -> "TrainingPipeline":
        """What only the whole document tells: the names the training operator derives, and which
        stages write where (a second writer or a stage reading its own output destroys data)."""
        problems = []
        outputs: list[str] = []
        for i, stage in enumerate(self.spec.stages):
            if reason := rules.replica_name_problem(self.metadata.name, stage.name, stage.replicas):
                problems.append((f"spec.stages[{i}].name", reason))
            out = self.output_of(stage)
            for j, other in enumerate(outputs):
                if rules.overlaps(out, other):
                    problems.append((f"spec.stages[{i}].output", f"{out!r} overlaps the output of spec.stages[{j}]"))
            outputs.append(out)
            for key, uri in stage.inputs.items():
                if not uri.startswith("stage://") and rules.overlaps(out, uri):
                    problems.append((f"spec.stages[{i}].inputs.{key}", f"overlaps this stage's own output {out!r}"))
        if problems:
            raise FieldErrors(problems)
        return self

    def stage(self, name: str) -> Stage:
        for s in self.spec.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def source(self, stage: StageBase, key: str) -> Stage | None:
        """The stage whose output `stage`'s input `key` reads (`stage://`); None for a URI or no such input."""
        uri = stage.inputs.get(key, "")
        return self.stage(uri.removeprefix("stage://")) if uri.startswith("stage://") else None

    def model_lineage(self, stage: StageBase) -> list[Stage]:
        """`stage`, then each stage its `model` input reads from, back to one without such an input
        (a pretrain stage, or a model given by URI)."""
        lineage = [stage]
        while (parent := self.source(lineage[-1], "model")) is not None:
            lineage.append(parent)
        return lineage

    def output_of(self, stage: StageBase) -> str:
        return stage.output or f"{self.spec.storage.uri}/{self.metadata.name}/{stage.name}"

    def scheduling_of(self, stage: StageBase) -> Scheduling:
        return effective_scheduling(self.spec.scheduling, stage.scheduling)

    def resolve_inputs(self, stage: StageBase) -> dict[str, str]:
        """stage://<name> references replaced by that stage's output URI."""
        return {
            key: self.output_of(self.stage(uri[len("stage://") :])) if uri.startswith("stage://") else uri
            for key, uri in stage.inputs.items()
        }
