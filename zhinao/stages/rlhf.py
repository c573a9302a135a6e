"""RLHF stage: ReMax (default) or PPO online from prompts, or DPO/ORPO offline from preference pairs.

inputs:  policy       (an SFT output prefix; also the frozen KL/DPO reference, re-loaded from here)
         reward       (a reward-stage output prefix; needed when rmWeight > 0 for remax/ppo)
         prompts      (remax/ppo: JSONL {"prompt": str | messages, ...facts the rules check, e.g. "answer"})
         evalPrompts  (optional held-out prompts; default: the last `evalPrompts` of inputs.prompts)
         preferences  (dpo/orpo: the reward stage's pair JSONL)
output:  checkpoints/ hf/ (the policy) metrics/ report/rlhf.png report/rlhf.md summary.json

Rollouts come from the engine `rolloutEngine` names (zhinao/rollout/): all prompts of a step in one
call, sampled (at `temperature`) and, for ReMax, greedy, stopping at <|im_end|>, <eod> or <|im_start|>.
The checked reward is measured on held-out prompts before training (the SFT policy) and after.
"""

import contextlib
import io
import json
import logging
import time

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForTokenClassification

from zhinao import reward_guard, rule_rewards
from zhinao.chat import IGNORE_INDEX, ChatEncoder, as_messages
from zhinao.config.rlhf import RLHFParams
from zhinao.config.runtime import StageRuntime
from zhinao.data.packing import batch_indices
from zhinao.losses import (
    dpo_loss,
    gae,
    kl_per_token,
    kl_shaped_return,
    lm_loss,
    masked_mean,
    orpo_loss,
    ppo_policy_loss,
    ppo_value_loss,
    remax_loss,
    sequence_logprob,
    token_logprobs,
)
from zhinao.model import attention_implementation
from zhinao.rollout.engine import RolloutEngine, Sampling
from zhinao.rollout.factory import build_rollout_engine
from zhinao.stages.reward import encode_pairs, load_reward_model, pad_right
from zhinao.stages.sft import fetch_hf, load_causal_lm, metrics_records, read_jsonl
from zhinao.tokenizer import load as load_tokenizer
from zhinao.training.optim import param_groups
from zhinao.training.session import TrainingSession, autocast_dtype

Params = RLHFParams
log = logging.getLogger(__name__)


class ActorCritic(torch.nn.Module):
    """Policy and critic trained by one optimizer step (so DDP sees one forward per micro-batch)."""

    def __init__(self, policy, critic):
        super().__init__()
        self.policy, self.critic = policy, critic

    def forward(self, input_ids, attention_mask):
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask).logits
        values = self.critic(input_ids=input_ids, attention_mask=attention_mask).logits[..., 0].float()
        return logits, values

    def save_pretrained(self, path, state_dict=None, **kwargs):
        """Exports the policy only: the next stage needs it; the critic lives on in checkpoints."""
        if state_dict is not None:
            state_dict = {k[len("policy.") :]: v for k, v in state_dict.items() if k.startswith("policy.")}
        self.policy.save_pretrained(path, state_dict=state_dict, **kwargs)


class Offloaded(torch.nn.Module):
    """A frozen model kept in CPU memory and moved onto the device for each forward pass only."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.inner, self.device = [model], device  # a list: not a submodule, so .to() elsewhere cannot move it

    def forward(self, **inputs):
        model = self.inner[0].to(self.device)
        try:
            return model(**inputs)
        finally:
            model.to("cpu")


def frozen(model: torch.nn.Module, params: RLHFParams, device: torch.device) -> torch.nn.Module:
    """The reference or reward model in `referencePrecision`, on the device or offloaded to CPU."""
    model = model.eval().requires_grad_(False)
    if autocast_dtype(params.reference_precision, device) == torch.bfloat16:
        model = model.to(torch.bfloat16)
    if params.offload_frozen and device.type != "cpu":
        return Offloaded(model, device)
    return model.to(device)


def precision(params: RLHFParams, device: torch.device):
    """The update's autocast, for the rollout's log-probs and values (PPO's old log-probs must match it)."""
    dtype = autocast_dtype(params.precision, device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class Scorer:
    """score(record, response) = rmWeight * RM(prompt, response) + sum_i w_i * rule_i(record, response)."""

    def __init__(self, params: RLHFParams, enc: ChatEncoder, rm, device):
        self.params, self.enc, self.rm, self.device = params, enc, rm, device

    @torch.no_grad()
    def __call__(self, records: list[dict], responses: list[str]) -> dict[str, torch.Tensor]:
        rule = torch.tensor([rule_rewards.score(r, y, self.params.rules) for r, y in zip(records, responses)])
        rm = torch.zeros(len(records))
        if self.rm is not None and self.params.rm_weight > 0:
            seqs = [
                self.enc.completion(as_messages(r["prompt"]), y, system=self.params.system_prompt).input_ids
                for r, y in zip(records, responses)
            ]
            ids, mask = pad_right(seqs, self.enc.tokenizer.pad_token_id, self.device)
            rm = self.rm(input_ids=ids, attention_mask=mask).logits[:, 0].float().cpu()
        return {"score": (self.params.rm_weight * rm + rule).to(self.device), "rm": rm, "rule": rule}


# ------------------------------------------------------------------------------------ rollouts


def load_prompts(uri: str, enc: ChatEncoder, params: RLHFParams) -> list[dict]:
    out = []
    for r in read_jsonl(uri):
        ids = enc.prompt(as_messages(r["prompt"]), system=params.system_prompt)
        if len(ids) <= params.max_prompt_len:
            out.append({**r, "_ids": ids})
    return out


def sampling_of(params: RLHFParams) -> Sampling:
    return Sampling(max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_k=params.top_k)


def sequence_batch(prompts: list[dict], responses: list[list[int]], pad: int, device) -> dict:
    """prompt + response rows, right-padded; labels on the response tokens only."""
    seqs = [p["_ids"] + r for p, r in zip(prompts, responses)]
    ids, mask = pad_right(seqs, pad, device)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        labels[i, len(p["_ids"]) : len(p["_ids"]) + len(r)] = torch.tensor(r, device=device)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def texts(tokenizer, responses: list[list[int]]) -> list[str]:
    return [tokenizer.decode(r, skip_special_tokens=True) for r in responses]


@torch.no_grad()
def logprobs_of(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return token_logprobs(
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
    )


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


# ------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(
    rollouts: RolloutEngine, prompts: list[dict], scorer: Scorer, params: RLHFParams, tokenizer, device
) -> dict | None:
    """Mean score components on held-out prompts: greedy, and `evalSamples` samples per prompt (seeded)."""
    if not prompts:
        return None
    sampled, greedy = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(params.seed + 7)
        for start in range(0, len(prompts), 64):
            gen = rollouts.generate(
                [p["_ids"] for p in prompts[start : start + 64]],
                sampled=params.eval_samples,
                greedy=True,
                sampling=sampling_of(params),
            )
            sampled, greedy = sampled + gen.sampled, greedy + gen.greedy
    result = {}
    for name, responses, reps in (("greedy", greedy, 1), ("sampled", sampled, params.eval_samples)):
        s = scorer([p for p in prompts for _ in range(reps)], texts(tokenizer, responses))
        result[name] = {k: float(v.float().mean()) for k, v in s.items()}
        # The spread of the checked reward, so that a change can be told from noise (reward_guard).
        result[name].update(rule_std=float(s["rule"].float().std()) if len(responses) > 1 else 0.0, n=len(responses))
    return result


# ------------------------------------------------------------------------------------ steps


def remax_rollout(policy, ref, prompts, generated, scorer, params, tokenizer, device) -> tuple[dict, dict]:
    """`generated`: (one sampled response per prompt, one greedy response per prompt)."""
    pad = tokenizer.pad_token_id
    rollouts = {}
    for kind, responses in zip(("sample", "greedy"), generated):
        batch = sequence_batch(prompts, responses, pad, device)
        logp, mask = logprobs_of(policy, batch)
        ref_logp, _ = logprobs_of(ref, batch)
        s = scorer(prompts, texts(tokenizer, responses))
        rollouts[kind] = dict(
            batch=batch,
            mask=mask,
            score=s,
            logp=logp,
            ref_logp=ref_logp,
            ret=kl_shaped_return(s["score"], logp, ref_logp, mask, params.kl_coef, params.kl_estimator),
        )
    sample, greedy = rollouts["sample"], rollouts["greedy"]
    train = {**sample["batch"], "ret": sample["ret"], "baseline": greedy["ret"]}
    kl = (kl_per_token(sample["logp"], sample["ref_logp"], params.kl_estimator) * sample["mask"]).sum(-1)
    stats = {
        "reward_mean": sample["score"]["score"].mean().item(),
        "reward_greedy_mean": greedy["score"]["score"].mean().item(),
        "reward_rule_mean": sample["score"]["rule"].mean().item(),
        "reward_rm_mean": sample["score"]["rm"].mean().item(),
        "kl": kl.mean().item(),
        "response_tokens": sample["mask"].sum(-1).mean().item(),
        "advantage_mean": (sample["ret"] - greedy["ret"]).mean().item(),
    }
    return train, stats


def remax_loss_fn(model, b):
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    logp, mask = token_logprobs(logits, b["labels"])
    return remax_loss(logp, mask, b["ret"], b["baseline"])


def ppo_rollout(ac: ActorCritic, ref, prompts, generated, scorer, params, tokenizer, device) -> tuple[dict, dict]:
    """`generated`: (one sampled response per prompt,)."""
    responses = generated[0]
    batch = sequence_batch(prompts, responses, tokenizer.pad_token_id, device)
    with torch.no_grad():
        logits, values = ac(batch["input_ids"], batch["attention_mask"])
        old_logp, mask = token_logprobs(logits, batch["labels"])
        ref_logp, _ = logprobs_of(ref, batch)
    old_values = values[:, :-1] * mask
    s = scorer(prompts, texts(tokenizer, responses))
    kl = kl_per_token(old_logp, ref_logp, params.kl_estimator) * mask
    rewards = -params.kl_coef * kl
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & (mask > 0)  # the final response token
    rewards = rewards + last * s["score"][:, None]
    # GAE wants responses left-aligned: shift each row so its response starts at column 0.
    start = mask.argmax(-1)
    cols = (torch.arange(mask.size(1), device=device)[None] + start[:, None]).clamp(max=mask.size(1) - 1)
    gather = lambda x: torch.gather(x, 1, cols)  # noqa: E731
    adv_l, ret_l = gae(gather(rewards), gather(old_values), gather(mask), params.gamma, params.lam)
    adv, ret = torch.zeros_like(adv_l), torch.zeros_like(ret_l)
    adv.scatter_(1, cols, adv_l * gather(mask))
    ret.scatter_(1, cols, ret_l * gather(mask))
    train = {
        **batch,
        "old_logp": old_logp,
        "old_values": old_values,
        "adv": whiten(adv, mask),
        "ret": ret,
        "mask": mask,
    }
    stats = {
        "reward_mean": s["score"].mean().item(),
        "reward_rule_mean": s["rule"].mean().item(),
        "reward_rm_mean": s["rm"].mean().item(),
        "kl": kl.sum(-1).mean().item(),
        "response_tokens": mask.sum(-1).mean().item(),
        "value_mean": masked_mean(old_values, mask).item(),
    }
    return train, stats


def ppo_loss_fn(params: RLHFParams):
    def fn(model, b):
        logits, values = model(b["input_ids"], b["attention_mask"])
        logp, mask = token_logprobs(logits, b["labels"])
        return ppo_policy_loss(
            logp, b["old_logp"], b["adv"], mask, params.clip_range
        ) + params.vf_coef * ppo_value_loss(values[:, :-1], b["old_values"], b["ret"], mask, params.value_clip)

    return fn


def preference_loss_fn(params: RLHFParams, ref, stats: list):
    def fn(model, b):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        n = len(b["input_ids"]) // 2
        if params.algorithm == "dpo":
            logp = sequence_logprob(logits, b["labels"])
            with torch.no_grad():
                ref_logp = sequence_logprob(
                    ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"]
                )
            margin = (logp[:n] - ref_logp[:n]) - (logp[n:] - ref_logp[n:])
            stats.append(params.beta * margin.detach())
            return dpo_loss(logp[:n], logp[n:], ref_logp[:n], ref_logp[n:], params.beta)
        mean_logp = sequence_logprob(logits, b["labels"], average=True)
        stats.append((mean_logp[:n] - mean_logp[n:]).detach())
        return orpo_loss(lm_loss(logits[:n], b["labels"][:n]), mean_logp[:n], mean_logp[n:], params.orpo_lambda)

    return fn


# ------------------------------------------------------------------------------------------ run


def run(rt: StageRuntime, params: RLHFParams) -> None:
    session = TrainingSession(rt, keep_checkpoints=params.keep_checkpoints)
    env, out, device = session.env, session.out, session.device
    online = params.algorithm in ("remax", "ppo")
    need = (
        ["policy"]
        + (["prompts"] if online else ["preferences"])
        + (["reward"] if online and params.rm_weight > 0 else [])
    )
    for name in need:
        if name not in rt.inputs:
            raise SystemExit(f"rlhf stage ({params.algorithm}) needs inputs.{name}")
    policy_dir, tok_dir = fetch_hf(rt.inputs["policy"], session.workdir / "policy")
    tokenizer = load_tokenizer(tok_dir)
    enc, pad = ChatEncoder(tokenizer), tokenizer.pad_token_id
    policy = load_causal_lm(policy_dir, params.attention)
    ref = frozen(load_causal_lm(policy_dir, params.attention), params, device)
    rm, rm_dir = None, None
    if "reward" in rt.inputs:
        rm_dir, _ = fetch_hf(rt.inputs["reward"], session.workdir / "reward")
        rm = frozen(load_reward_model(rm_dir, params.attention, pad), params, device)
    scorer = Scorer(params, enc, rm, device)

    train_prompts, eval_prompts = [], []
    if "prompts" in rt.inputs:
        train_prompts = load_prompts(rt.inputs["prompts"], enc, params)
        if "evalPrompts" in rt.inputs:
            eval_prompts = load_prompts(rt.inputs["evalPrompts"], enc, params)[: params.eval_prompts]
        elif params.eval_prompts and online:
            n = min(params.eval_prompts, len(train_prompts) // 2)
            train_prompts, eval_prompts = (
                train_prompts[: len(train_prompts) - n],
                train_prompts[len(train_prompts) - n :],
            )
    can_eval = bool(eval_prompts) and (params.rules or rm is not None)
    pairs = []
    if not online:
        pairs, _ = encode_pairs(read_jsonl(rt.inputs["preferences"]), tokenizer, params)  # type: ignore[arg-type]
        if not pairs:
            raise SystemExit("no preference pair fits maxLen")
    elif not train_prompts:
        raise SystemExit("no training prompt fits maxPromptLen")

    steps_per_rollout = params.ppo_epochs if params.algorithm == "ppo" else 1
    if params.algorithm == "ppo":
        init = rm_dir or policy_dir  # the critic starts from the RM when there is one
        torch.manual_seed(params.seed)
        config = AutoConfig.from_pretrained(init, num_labels=1)
        config.classifier_dropout = 0.0  # values must not be noisy
        critic = AutoModelForTokenClassification.from_pretrained(
            init, config=config, dtype=torch.float32, attn_implementation=attention_implementation(params.attention)
        )
        model = ActorCritic(policy, critic)
        groups = [{**g, "lr": params.lr} for g in param_groups(policy, params.weight_decay)] + [
            {**g, "lr": params.critic_lr} for g in param_groups(critic, params.weight_decay)
        ]
    else:
        model, groups = policy, None
    torch.manual_seed(params.seed + env.rank)  # rollouts sample: equal seeds, equal runs (resume restores it)
    total = params.max_steps * steps_per_rollout
    engine = session.build_engine(model, params, warmup=int(params.warmup_ratio * total), total=total, groups=groups)
    actor = (lambda: engine.model.policy) if params.algorithm == "ppo" else (lambda: engine.model)
    meta = session.resume(engine)
    start = meta.get("step", 0)
    kl_control = reward_guard.KLController(
        coef=meta.get("kl_coef", params.kl_coef), target=params.kl_target, horizon=params.kl_horizon
    )
    rollouts = None  # online training and held-out evaluation (DPO/ORPO too, given evalPrompts) generate
    if online or can_eval:
        rollouts = build_rollout_engine(params, model_dir=str(policy_dir), tokenizer=tokenizer, device=device)
        rollouts.sync(actor())
    if start == 0 and can_eval and env.is_main:
        meta["eval_before"] = evaluate(rollouts, eval_prompts, scorer, params, tokenizer, device)
    with torch.random.fork_rng(devices=[]):  # its peak-FLOPs probe draws random matrices
        metrics = session.open_metrics(flops_per_token=None, resumed_step=start)
    log.info(
        "%s on %d prompts / %d pairs (%d held-out prompts), steps %d..%d",
        params.algorithm,
        len(train_prompts),
        len(pairs),
        len(eval_prompts),
        start + 1,
        params.max_steps,
    )

    items = train_prompts if online else pairs
    end = start if "stopped" in meta else params.max_steps  # a run stopped by klStop stays stopped on resume
    for step in range(start, end):
        began = time.perf_counter()
        chunks = [
            [
                items[i]
                for i in batch_indices(
                    n_sequences=len(items),
                    step=step,
                    micro_step=m,
                    rank=env.rank,
                    world_size=env.world_size,
                    micro_batch=params.micro_batch_size,
                    grad_accum=params.grad_accum_steps,
                    seed=params.seed,
                )
            ]
            for m in range(params.grad_accum_steps)
        ]
        lr = engine.lr
        if online:
            remax = params.algorithm == "remax"
            gen_began = time.perf_counter()
            gen = rollouts.generate(
                [p["_ids"] for c in chunks for p in c], sampled=1, greedy=remax, sampling=sampling_of(params)
            )
            gen_seconds = time.perf_counter() - gen_began
            results, at = [], 0
            step_params = params.model_copy(update={"kl_coef": kl_control.coef})
            for c in chunks:
                generated = (gen.sampled[at : at + len(c)], gen.greedy[at : at + len(c)])[: 2 if remax else 1]
                rollout = remax_rollout if remax else ppo_rollout
                with precision(params, device):
                    results.append(rollout(engine.model, ref, c, generated, scorer, step_params, tokenizer, device))
                at += len(c)
            batches = [r[0] for r in results]
            extra = {k: float(np.mean([r[1][k] for r in results])) for k in results[0][1]}
            extra.update(generation_seconds=gen_seconds, kl_coef=kl_control.coef)
            kl_all = float(np.mean(session.gather(extra["kl"])))  # every rank takes the same decisions
            kl_control.update(kl_all, len(chunks) * params.micro_batch_size * env.world_size)
            if params.kl_stop is not None and kl_all > params.kl_stop:
                meta["stopped"] = {"step": step + 1, "kl": kl_all}
            fn = remax_loss_fn if remax else ppo_loss_fn(params)
            for _ in range(steps_per_rollout):
                loss, grad_norm = engine.train_step(batches, loss_fn=fn)
            rollouts.sync(actor())
        else:
            seen: list[torch.Tensor] = []
            batches = [preference_batch(c, pad, device) for c in chunks]
            loss, grad_norm = engine.train_step(batches, loss_fn=preference_loss_fn(params, ref, seen))
            margins = torch.cat(seen)
            extra = {"reward_margin": margins.mean().item(), "pref_accuracy": (margins > 0).float().mean().item()}
        metrics.record_step(
            step=step + 1,
            loss=loss,
            lr=lr,
            grad_norm=grad_norm,
            tokens=sum(int(b["attention_mask"].sum()) for b in batches),
            samples=sum(len(c) for c in chunks),
            step_seconds=time.perf_counter() - began,
            **extra,
        )
        if (step + 1) % params.log_every == 0 and env.is_main:
            log.info(
                "step %d/%d loss %.4f %s",
                step + 1,
                params.max_steps,
                loss,
                " ".join(f"{k} {v:.3f}" for k, v in extra.items()),
            )
        stop = meta.get("stopped", {}).get("step") == step + 1
        if (step + 1) % params.checkpoint_every == 0 or step + 1 == params.max_steps or stop:
            state = {**meta, "step": step + 1, "world_size": env.world_size, "kl_coef": kl_control.coef}
            session.save_checkpoint(engine, step + 1, state)
        if stop:
            log.info("step %d: KL %.3f > klStop %.3f, stopping", step + 1, meta["stopped"]["kl"], params.kl_stop)
            break

    eval_after = None
    if can_eval:
        rollouts.sync(actor())  # offline steps do not sync; every rank pushes (vLLM), only rank 0 evaluates
        eval_after = evaluate(rollouts, eval_prompts, scorer, params, tokenizer, device) if env.is_main else None
    hf = session.export_hf(engine, tokenizer_dir=tok_dir)
    session.upload_metrics()
    if env.is_main:
        steps = [x for x in metrics_records(out) if x.get("event", "step") == "step"]
        summary = {
            "algorithm": params.algorithm,
            "steps": len(steps),
            "loss_first": steps[0]["loss"],
            "loss_last": steps[-1]["loss"],
            "eval_prompts": len(eval_prompts),
            "eval_before": meta.get("eval_before"),
            "eval_after": eval_after,
            "hf": hf,
            "checkpoints": out.url("checkpoints"),
            "metrics": out.url("metrics"),
        }
        if online:
            last5 = lambda key: float(np.mean([s[key] for s in steps[-5:]]))  # noqa: E731
            summary.update(
                reward_first=steps[0]["reward_mean"],
                reward_last=last5("reward_mean"),
                reward_rm_first=steps[0]["reward_rm_mean"],
                reward_rm_last=last5("reward_rm_mean"),
                reward_rule_first=steps[0]["reward_rule_mean"],
                reward_rule_last=last5("reward_rule_mean"),
                kl_last=steps[-1]["kl"],
                kl_coef_last=steps[-1]["kl_coef"],
                stopped_early=meta.get("stopped"),
                reward_guard=guard(summary, steps, uses_rm=rm is not None and params.rm_weight > 0),
            )
        out.put_bytes("report/rlhf.png", rlhf_png(steps, summary))
        out.put_bytes("report/rlhf.md", rlhf_markdown(summary).encode())
        out.put_bytes("summary.json", json.dumps(summary, indent=2).encode())
    session.close()


def guard(summary: dict, steps: list[dict], *, uses_rm: bool) -> dict:
    """Did the checked reward rise with the RM score? On held-out prompts when they were evaluated
    (sampled responses), else the first training step against the mean of the last five."""
    noise = None
    if summary["eval_before"] and summary["eval_after"]:
        b, a = summary["eval_before"]["sampled"], summary["eval_after"]["sampled"]
        where = f"held-out prompts, {a['n']} sampled responses each"
        noise = float(np.sqrt((b["rule_std"] ** 2 + a["rule_std"] ** 2) / a["n"]))
    else:
        b = {"rm": steps[0]["reward_rm_mean"], "rule": steps[0]["reward_rule_mean"]}
        a = {k: float(np.mean([s[f"reward_{k}_mean"] for s in steps[-5:]])) for k in ("rm", "rule")}
        where = "first training step vs the last five"
    rm = (b["rm"], a["rm"]) if uses_rm else None
    return reward_guard.verdict(rm=rm, checked=(b["rule"], a["rule"]), where=where, noise=noise)


def preference_batch(pairs: list[dict], pad: int, device) -> dict:
    """DPO/ORPO batch: chosen rows then rejected rows, labels on the response tokens only."""
    seqs = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    ids, mask = pad_right(seqs, pad, device)
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    for i in range(len(seqs)):
        labels[i, : pairs[i % len(pairs)]["prompt_len"]] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ------------------------------------------------------------------------------------- report


def rlhf_png(steps: list[dict], s: dict) -> bytes:
    from zhinao.report import plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    x = [r["step"] for r in steps]
    ax = axes[0]
    if "reward_mean" in steps[0]:
        ax.plot(x, [r["reward_mean"] for r in steps], label="sampled reward", color="#1f77b4")
        if "reward_greedy_mean" in steps[0]:
            ax.plot(
                x, [r["reward_greedy_mean"] for r in steps], label="greedy reward (ReMax baseline)", color="#2ca02c"
            )
        kx = ax.twinx()
        kx.plot(x, [r["kl"] for r in steps], color="#ff7f0e", alpha=0.6, label="KL to reference")
        kx.set_ylabel("KL (nats / response)")
    else:
        ax.plot(x, [r["reward_margin"] for r in steps], label="implicit reward margin", color="#1f77b4")
    ax.set_xlabel("step")
    ax.set_title(f"{s['algorithm']} training")
    ax.grid(alpha=0.3)
    fig.legend(loc="upper left")
    ax = axes[1]
    if s["eval_before"] and s["eval_after"]:
        labels, before, after = [], [], []
        for mode in ("greedy", "sampled"):
            for comp in ("rule", "rm"):
                labels.append(f"{mode}\n{comp}")
                before.append(s["eval_before"][mode][comp])
                after.append(s["eval_after"][mode][comp])
        pos = np.arange(len(labels))
        ax.bar(pos - 0.2, before, 0.4, label="before (SFT policy)", color="#7f7f7f")
        ax.bar(pos + 0.2, after, 0.4, label=f"after {s['algorithm']}", color="#d62728")
        ax.set_xticks(pos, labels)
        ax.legend()
    ax.set_title(f"held-out prompts ({s['eval_prompts']})")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def rlhf_markdown(s: dict) -> str:
    lines = [f"## RLHF ({s['algorithm']})", ""]
    if s["eval_before"] and s["eval_after"]:
        lines += ["| held-out prompts | before (SFT) | after |", "|---|---|---|"]
        for mode in ("greedy", "sampled"):
            for comp in ("rule", "rm"):
                lines.append(
                    f"| {mode} {comp} reward | {s['eval_before'][mode][comp]:.3f} | {s['eval_after'][mode][comp]:.3f} |"
                )
    if "reward_first" in s:
        lines += [
            "",
            f"Training reward {s['reward_first']:.3f} -> {s['reward_last']:.3f} (mean of the last 5 steps), "
            f"final KL {s['kl_last']:.3f} (beta {s['kl_coef_last']:.3g}).",
            "",
            f"Reward-hacking check: {s['reward_guard']['sentence']}.",
        ]
        if s["stopped_early"]:
            lines.append(
                f"Stopped early after step {s['stopped_early']['step']}: KL {s['stopped_early']['kl']:.3f} > klStop."
            )
    return "\n".join(lines + ["", "![RLHF](rlhf.png)", ""])
