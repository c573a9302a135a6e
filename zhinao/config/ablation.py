"""Parameters of the ablation environment (report section 2.6) that the training side needs.

The `Ablation` document (zhinao_k8s.api.ablation) is built from these models, as the
TrainingPipeline is built from the stage params.
"""

import re

from pydantic import Field, model_validator

from zhinao.config._base import SpecModel
from zhinao.config.data import DataParams
from zhinao.config.optim import MAX_MICRO_BATCH, MAX_SEQ_LEN
from zhinao.config.pretrain import ModelSize
from zhinao.config.rlhf import RULES
from zhinao.config.sft import SFTParams
from zhinao.config.tokenizer import TokenizerParams

RECIPE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class BaseData(SpecModel):
    corpus: str
    """URI prefix of the fixed base mixture (JSONL documents, or a data-stage output with docs/).
    Held constant across every run of the ablation."""

    data: DataParams | None = None
    """Run the data pipeline with these params over `corpus` first (None: use the documents as they are)."""


class Recipe(SpecModel):
    name: str = Field(max_length=16)
    """DNS label; runs are named `<ablation>-<recipe>-s<seed>`."""

    data: DataParams | None = None
    """Data-pipeline configuration applied to the experimental corpus (unset fields: the data stage's defaults)."""

    dataset: str | None = None
    """Or: a prepared dataset (URI prefix of JSONL documents) used as the experimental data as is."""

    corpus: str | None = None
    """Input of this recipe's data pipeline; default: the ablation's `corpus`."""

    @model_validator(mode="after")
    def _one_source(self) -> "Recipe":
        if not RECIPE_NAME.match(self.name):
            raise ValueError(f"name {self.name!r} must be a DNS label (lowercase letters, digits and '-')")
        if self.data is not None and self.dataset is not None:
            raise ValueError("set either data (a data-pipeline configuration) or dataset (a URI), not both")
        return self


class Proxy(SpecModel):
    """The small model every recipe is trained on. Defaults: the report's 1.8B model on 100B tokens,
    at 4096 tokens x 512 sequences per step (about 47.7K steps, as the x-axes of its loss plots)."""

    model_size: ModelSize = "1.8b"
    """Named 360Zhinao-architecture size (`tiny` for CPU)."""

    tokens: int = Field(default=100_000_000_000, ge=1)
    """Training budget in tokens per run; maxSteps = tokens / (seqLen x global batch)."""

    seq_len: int = Field(default=4096, ge=16, le=MAX_SEQ_LEN)
    micro_batch_size: int = Field(default=4, ge=1, le=MAX_MICRO_BATCH)
    grad_accum_steps: int = Field(default=2, ge=1)
    # The bounds of a pipeline stage's replicas, nprocPerNode and gpu: each run is such a stage.
    replicas: int = Field(default=8, ge=1, le=1024)
    """Pods per run (PyTorchJob Master + Workers)."""

    nproc_per_node: int = Field(default=8, ge=1, le=64)
    gpu: int = Field(default=8, ge=0, le=16)
    """GPUs per pod."""

    cpu: str = "32"
    memory: str = "256Gi"
    lr: float = Field(default=3e-4, gt=0)
    warmup_steps: int = Field(default=2000, ge=0)

    @property
    def world_size(self) -> int:
        return self.replicas * self.nproc_per_node

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.micro_batch_size * self.grad_accum_steps * self.world_size

    @property
    def max_steps(self) -> int:
        return max(1, self.tokens // self.tokens_per_step)

    @model_validator(mode="after")
    def _warmup_fits(self) -> "Proxy":
        if self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"warmupSteps ({self.warmup_steps}) must be < the {self.max_steps} steps the token budget gives"
            )
        return self


class DataJobs(SpecModel):
    """The data-stage PyTorchJobs that process the base corpus (when `base.data` is set) and every
    recipe with `data`: one job each, all in one TrainingPipeline `<ablation>-data`; then the
    `<ablation>-prepare` job that mixes and tokenizes every recipe."""

    replicas: int = Field(default=4, ge=1, le=1024)
    """Pods (one rank each) per job: each rank processes its share of the input files, and duplicates
    are found across ranks, so the output is the same for any number of replicas. The prepare job
    has as many ranks (with the proxy's cpu and memory): each measures and tokenizes its share, and
    its mixtures and token shards are the same for any number of replicas too."""

    cpu: str = "8"
    memory: str = "32Gi"
    """Per pod. A rank holds one document at a time plus compact per-document hashes."""


class ValidLoss(SpecModel):
    enabled: bool = True
    every_steps: int = Field(default=500, ge=1)
    """Evaluate every N steps (the report: about every 500), in the pretrain loop (its `evalEvery`),
    and checkpoint every N steps for resume (only the latest checkpoint is kept)."""

    held_out_share: float = Field(default=0.05, gt=0, lt=1)
    """Share of topics held out of training for validation (whole topics, so no overlap)."""

    topic_field: str = "url"
    """Document field naming its topic; for URLs the topic is host + path without the last
    segment (the pages of one module share a topic). Missing: the document is its own topic."""

    max_sequences: int = Field(default=256, ge=1)
    """Validation sequences of seqLen tokens (taken from the held-out topics of the base data)."""


class Benchmarks(SpecModel):
    enabled: bool = True
    builtin: bool = True
    """Include the synthetic suite built from the held-out topics (word order, next word, completion)."""

    tasks: list[str] = Field(default_factory=list)
    """URIs of task files in the JSONL format of docs/ablation.md."""

    items_per_task: int = Field(default=100, ge=1)
    """Items per built-in task (the report trims sample sizes per task too)."""

    max_new_tokens: int = Field(default=8, ge=1)
    """Greedy generation length for generative tasks."""


class SftEval(SpecModel):
    """The report's third evaluation: fine-tune every run's base model with one fixed SFT recipe and
    score its answers to held-out prompts with a reward (a reward model and/or rule rewards)."""

    enabled: bool = False
    data: str | None = None
    """URI prefix of SFT conversations (the sft stage's JSONL). None: the built-in single-digit
    addition set of the alignment demo (zhinao.synthetic: 30% refusals and 10% wrong sums among
    the demonstrations, as real SFT data is imperfect)."""

    prompts: str | None = None
    """URI prefix of the prompts to answer, one JSON object per line: {"prompt": ..., plus the fields
    the rules read, e.g. "answer"}. None: the 100 built-in addition questions. They are the questions
    of the SFT data (a tiny proxy does not generalise addition to unseen operands), so the score says
    how well each base learns the right answer from noisy demonstrations on the fixed budget."""

    params: SFTParams = Field(default_factory=SFTParams)
    """The fixed SFT recipe, the same for every run (each run fine-tunes with its own seed)."""

    reward_model: str | None = None
    """URI of a reward-stage output (its hf/ export): its score of (prompt, answer) is added to the reward.
    It reads text, so its tokenizer need not be the ablation's."""

    rules: dict[str, float] = Field(default_factory=lambda: {"arithmetic": 1.0})
    """Rule rewards added to the score, name -> weight (zhinao.rule_rewards: arithmetic, code_switch,
    function_call). The default checks the built-in addition prompts; `{}` leaves the reward model alone."""

    max_new_tokens: int = Field(default=16, ge=1)
    samples: int = Field(default=4, ge=1)
    """Sampled answers per prompt (temperature 1), besides the greedy one."""

    max_prompts: int = Field(default=200, ge=1)

    def data_uri(self, prep_uri: str) -> str:
        return self.data or f"{prep_uri}/sft/data"

    def prompts_uri(self, prep_uri: str) -> str:
        return self.prompts or f"{prep_uri}/sft/prompts"

    @model_validator(mode="after")
    def _has_reward(self) -> "SftEval":
        unknown = sorted(set(self.rules) - set(RULES))
        if unknown:
            raise ValueError(f"rules: unknown rule {', '.join(unknown)} (known: {', '.join(RULES)})")
        if self.enabled and self.reward_model is None and not any(self.rules.values()):
            raise ValueError("SFT evaluation needs a reward: set rewardModel or rules")
        return self


class Evaluations(SpecModel):
    valid_loss: ValidLoss = Field(default_factory=ValidLoss)
    benchmarks: Benchmarks = Field(default_factory=Benchmarks)
    sft: SftEval = Field(default_factory=SftEval)


class AblationParams(SpecModel):
    """Everything `zhinao.ablation` needs to prepare data and evaluate runs."""

    base: BaseData
    corpus: str | None = None
    """Default input of the recipes' data pipelines (the experimental corpus)."""

    recipes: list[Recipe] = Field(min_length=2)
    experimental_share: float = Field(default=0.5, gt=0, lt=1)
    """Share of each run's training tokens taken from the recipe (the report: 50%; the rest is base)."""

    proxy: Proxy = Field(default_factory=Proxy)
    seeds: int = Field(default=3, ge=1, le=20)
    """Pretraining runs per recipe. Each run has its own seed (init and data order), so seed noise is measured."""

    seed: int = 0
    """Seeds the topic split, the mixing and the built-in suite (fixed across runs)."""

    data_jobs: DataJobs = Field(default_factory=DataJobs)
    """The distributed data processing of the base corpus and the recipes (before the mixing)."""

    tokenizer: TokenizerParams = Field(default_factory=TokenizerParams)
    """One tokenizer for the whole ablation, trained on the base data's training topics."""

    evaluations: Evaluations = Field(default_factory=Evaluations)

    @model_validator(mode="after")
    def _recipes(self) -> "AblationParams":
        names = [r.name for r in self.recipes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"recipe names used twice: {', '.join(dup)}")
        for r in self.recipes:
            if r.dataset is None and r.corpus is None and self.corpus is None:
                raise ValueError(f"recipe {r.name!r} has no input: set corpus (spec or recipe) or dataset")
        return self

    def run_seed(self, recipe_index: int, k: int) -> int:
        """Distinct seeds per run: identical recipes then differ by seed noise only, as Welch's test assumes."""
        return self.seed * 1_000_003 + 1000 * recipe_index + k

    def recipe_corpus(self, recipe: Recipe) -> str | None:
        return recipe.corpus or self.corpus

    def processed(self) -> dict[str, tuple[DataParams, str]]:
        """What the data jobs process: {prefix under the preparation root: (params, corpus URI)} for
        the base corpus (when `base.data` is set) and every recipe that is not a prepared dataset."""
        jobs = {BASE_DATA: (self.base.data, self.base.corpus)} if self.base.data is not None else {}
        for r in self.recipes:
            if r.dataset is None:
                jobs[recipe_data(r.name)] = (r.data or DataParams(), self.recipe_corpus(r))
        return jobs


BASE_DATA = "base"
"""The data stage's output over the base corpus, under the preparation root."""


def recipe_data(recipe: str) -> str:
    """A recipe's data-stage output, under the preparation root."""
    return f"recipes/{recipe}/data"
