"""Hyperparameters of the RLHF stage (report section 3.2): ReMax by default, PPO, DPO, ORPO.

The report's RL is "a PPO variant similar to ReMax (no value network)"; its hyperparameters are
not published, so the defaults here are conventional starting points, not the report's.
"""

from typing import Literal

from pydantic import Field, model_validator

from zhinao.config.optim import MAX_SEQ_LEN, FinetuneOptimParams, Precision

RULES = ("arithmetic", "code_switch", "function_call")


class RLHFParams(FinetuneOptimParams):
    algorithm: Literal["remax", "ppo", "dpo", "orpo"] = "remax"
    """`remax`: REINFORCE with the greedy response as baseline, no critic (the report's choice);
    `ppo`: clipped PPO with a value network (critic); `dpo`/`orpo`: offline, from preference pairs."""

    lr: float = Field(default=1e-6, gt=0)
    """Policy learning rate (not in the report)."""

    max_steps: int = Field(default=100, ge=1)
    """Optimizer steps (online: one rollout batch each; offline: one batch of pairs each)."""

    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)

    # -- rollouts (remax, ppo)
    max_new_tokens: int = Field(default=128, ge=1, le=MAX_SEQ_LEN)
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature of the rollouts (the greedy baseline ignores it)."""

    top_k: int = Field(default=0, ge=0)
    """0: no top-k truncation (sample from the full distribution, as the policy gradient assumes)."""

    max_prompt_len: int = Field(default=512, ge=8, le=MAX_SEQ_LEN)
    """Prompts longer than this (in tokens) are dropped."""

    system_prompt: str | None = None
    """Prepended as a system turn to prompts without one (use the SFT stage's value)."""

    rollout_engine: Literal["hf", "vllm"] = "hf"
    """What generates the rollouts (zhinao/rollout/). `hf`: one batched, KV-cached decode loop per
    step on the training module itself (all prompts, sampled and greedy rows together; CPU and GPU).
    `vllm`: a vLLM engine colocated on each GPU rank, asleep during updates and given the policy's
    weights after each one (GPU trainer image only)."""

    rollout_precision: Precision = "auto"
    """`hf` engine: `bf16` decodes under bf16 autocast (KV cache in bf16), `fp32` in the model's
    precision (through SDPA where the model attends with flash-attn, which refuses fp32), `auto` is
    bf16 on a GPU that supports it and fp32 on CPU. vLLM always runs bf16."""

    vllm_gpu_memory_utilization: float = Field(default=0.3, gt=0, lt=1)
    """`vllm` engine: share of the GPU's memory its weights and KV cache may take while awake."""

    # -- reward
    kl_coef: float = Field(default=0.05, ge=0)
    """beta in R(y) = score(y) - beta * sum_t KL_t(pi || pi_ref)."""

    kl_estimator: Literal["k1", "k3"] = "k1"
    kl_target: float | None = Field(default=None, gt=0)
    """Target KL to the reference per response (nats). Unset: beta stays at klCoef. Set: klCoef is the
    starting beta, adapted after every step toward the target (Ziegler et al. 2019; see
    zhinao/reward_guard.py), to hold the policy near the reference."""

    kl_horizon: int = Field(default=10_000, ge=1)
    """Adaptive KL: beta moves by at most 20% x (prompts of the step) / klHorizon per step."""

    kl_stop: float | None = Field(default=None, gt=0)
    """Stop training after a step whose mean KL per response (over all ranks) exceeds this; that
    step is checkpointed and exported, and the summary records the stop."""

    rm_weight: float = Field(default=1.0, ge=0)
    """Weight of the reward model's score in the total score (needs inputs.reward when > 0)."""

    reference_precision: Precision = "auto"
    """Precision the frozen reference and reward model are held (stored) in, not the one they compute
    in: their forwards always compute in the stage's `precision`, as the policy's do (under bf16,
    fp32-held weights run under bf16 autocast, or are gathered in bf16 under FSDP2), so attention
    always gets bf16 (flash-attn takes nothing else). `fp32`: the weights stay as exported, so the
    reference computes exactly as the policy does before its first update (KL exactly 0 at the
    start). `bf16`: half the memory; under DDP the reference then differs from the policy by bf16
    rounding of its weights. `auto`: bf16 on a GPU that supports it, fp32 on CPU."""

    offload_frozen: bool = False
    """Keep the reference and reward model in CPU memory and move each onto the GPU only for its
    forward passes (GPU memory for transfer time)."""

    rules: dict[str, float] = Field(default_factory=dict)
    """Rule-based rewards added to the score, name -> weight. Names: arithmetic, code_switch,
    function_call (see zhinao.rule_rewards)."""

    # -- ppo
    ppo_epochs: int = Field(default=2, ge=1)
    """Passes over each rollout batch."""

    clip_range: float = Field(default=0.2, gt=0)
    value_clip: float = Field(default=0.2, gt=0)
    vf_coef: float = Field(default=0.5, gt=0)
    """Weight of the critic's loss in the joint policy + critic loss."""

    critic_lr: float = Field(default=5e-6, gt=0)
    gamma: float = Field(default=1.0, gt=0, le=1)
    lam: float = Field(default=0.95, ge=0, le=1)

    # -- dpo / orpo
    beta: float = Field(default=0.1, gt=0)
    """DPO temperature."""

    orpo_lambda: float = Field(default=0.1, gt=0)
    """Weight of ORPO's odds-ratio term."""

    max_len: int = Field(default=1024, ge=16, le=MAX_SEQ_LEN)
    """DPO/ORPO: longest prompt + response in tokens."""

    # -- evaluation on held-out prompts (online algorithms)
    eval_prompts: int = Field(default=64, ge=0)
    """Prompts held out of training (from inputs.evalPrompts, else the first ones of inputs.prompts)
    on which the checked (rule) reward is measured before and after training."""

    eval_samples: int = Field(default=2, ge=1)
    """Sampled responses per held-out prompt (plus one greedy)."""

    @model_validator(mode="after")
    def _check(self) -> "RLHFParams":
        for name in self.rules:
            if name not in RULES:
                raise ValueError(f"unknown rule reward {name!r}; known: {', '.join(RULES)}")
        if self.algorithm in ("remax", "ppo") and self.zero_stage == 3:
            raise ValueError("online RL generates with the full policy on every rank: use zeroStage 0-2")
        if self.algorithm in ("remax", "ppo") and self.rm_weight == 0 and not self.rules:
            raise ValueError("online RL needs a reward: rmWeight > 0 or at least one rule")
        return self
