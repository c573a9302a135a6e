"""SFT evaluation of an ablation run (the report's third evaluation, section 2.6).

Every run's pipeline has an `sft` stage after pretraining, with the same fixed recipe for every
run (zhinao_k8s/render/ablation_runs.py); here its fine-tuned model answers the evaluation prompts
and a reward scores the answers: the rule rewards and/or a reward model, summed as in RLHF
(`zhinao.alignment.scoring.Scorer`).
Generation and scoring are RLHF's held-out evaluation, so the numbers mean the same in both places.

Built-in data (written under `<prep>/sft/` when the spec names none): the alignment demo's
single-digit addition conversations and the 100 addition questions (zhinao.synthetic).
"""

from pathlib import Path

import torch

from zhinao.ablation.evaluate import eval_device
from zhinao.alignment.data import head_prompts
from zhinao.alignment.models import load_causal_lm, load_reward_model
from zhinao.alignment.rollout import evaluate
from zhinao.alignment.scoring import Scorer
from zhinao.artifacts import StageOutput
from zhinao.chat import ChatEncoder
from zhinao.config.ablation import SftEval
from zhinao.config.rlhf import RLHFParams
from zhinao.rollout.factory import build_rollout_engine
from zhinao.storage import open_store
from zhinao.synthetic import all_pairs, rl_prompts, sft_conversations, write_jsonl
from zhinao.tokenizer import load as load_tokenizer

BUILTIN_SFT_EXAMPLES = 2000
"""The alignment demo's SFT set size: enough for a tiny proxy to learn the format and most sums."""


def write_builtin(sft: SftEval, prep_uri: str, *, seed: int) -> None:
    """The built-in SFT data and prompts, for what the spec leaves unset (idempotent)."""
    builtin = (
        (sft.data, sft.data_uri(prep_uri), lambda: sft_conversations(BUILTIN_SFT_EXAMPLES, seed=seed)),
        (sft.prompts, sft.prompts_uri(prep_uri), lambda: rl_prompts(all_pairs())),
    )
    for given, uri, records in builtin:
        if given is None and not open_store(uri).exists("part-00000.jsonl"):
            write_jsonl(uri, "part-00000.jsonl", records())


def scoring_params(sft: SftEval, *, with_rm: bool) -> RLHFParams:
    """The RLHF evaluation's knobs, set from the SFT evaluation's fields."""
    return RLHFParams(
        max_new_tokens=sft.max_new_tokens,
        rules=sft.rules,
        rm_weight=1.0 if with_rm else 0.0,
        eval_samples=sft.samples,
        eval_prompts=sft.max_prompts,
        system_prompt=sft.params.system_prompt,
        seed=sft.params.seed,
    )


@torch.no_grad()
def evaluate_sft(sft_uri: str, sft: SftEval, prep_uri: str, workdir: Path) -> dict:
    """{"loss_last", "eval_loss_after", "prompts", "parts", "greedy": {score, rm, rule}, "sampled": {...}}
    of one run's SFT stage (mean scores over the prompts)."""
    torch.manual_seed(0)
    device = eval_device()
    sft_model = StageOutput.at(sft_uri).fetch_hf(workdir / "sft")
    tokenizer = load_tokenizer(sft_model.tokenizer_dir)
    rm, rm_enc = None, None
    if sft.reward_model is not None:
        reward = StageOutput.at(sft.reward_model).fetch_hf(workdir / "reward")
        rm_enc = ChatEncoder(load_tokenizer(reward.tokenizer_dir))
        rm = load_reward_model(reward.model_dir, "sdpa", rm_enc.tokenizer.pad_token_id).to(device).eval()
    params = scoring_params(sft, with_rm=rm is not None)
    prompts = head_prompts(sft.prompts_uri(prep_uri), ChatEncoder(tokenizer), params, sft.max_prompts)
    if not prompts:
        raise ValueError(
            f"no SFT evaluation prompt under {sft.prompts_uri(prep_uri)} fits {params.max_prompt_len} tokens"
        )
    policy = load_causal_lm(sft_model.model_dir, "sdpa").to(device).eval()
    rollouts = build_rollout_engine(params, model_dir=str(sft_model.model_dir), tokenizer=tokenizer, device=device)
    rollouts.sync(policy)
    # The reward model reads the answer as text, re-encoded with its own tokenizer and chat format.
    scores = evaluate(
        rollouts, prompts, Scorer(params, rm_enc or ChatEncoder(tokenizer), rm, device), params, tokenizer, device
    )
    summary = StageOutput.at(sft_uri).read_summary()
    parts = (["rm"] if rm is not None else []) + (["rule"] if any(sft.rules.values()) else [])
    return {
        "loss_last": summary["loss_last"],
        "eval_loss_after": summary.get("eval_loss_after"),
        "prompts": len(prompts),
        "parts": parts,
        **scores,
    }


def sft_metrics(result: dict) -> dict[str, float]:
    """sft/loss (last SFT step), sft/score (greedy), sft/score_sampled; sft/rm and sft/rule when both score."""
    metrics = {
        "sft/loss": result["loss_last"],
        "sft/score": result["greedy"]["score"],
        "sft/score_sampled": result["sampled"]["score"],
    }
    if len(result["parts"]) > 1:
        metrics |= {f"sft/{part}": result["greedy"][part] for part in result["parts"]}
    return metrics
