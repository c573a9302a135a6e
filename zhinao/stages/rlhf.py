"""RLHF stage: ReMax (default) or PPO online from prompts, or DPO/ORPO offline from preference pairs.

inputs:  policy       (an SFT output prefix; also the frozen KL/DPO reference, re-loaded from here)
         reward       (a reward-stage output prefix; needed when rmWeight > 0 for remax/ppo)
         prompts      (remax/ppo: JSONL {"prompt": str | messages, ...facts the rules check, e.g. "answer"})
         evalPrompts  (optional held-out prompts; default: the first `evalPrompts` of inputs.prompts,
                       which are then left out of training)
         preferences  (dpo/orpo: the reward stage's pair JSONL)
output:  checkpoints/ hf/ (the policy) metrics/ report/rlhf.png report/rlhf.md summary.json

Rollouts come from the engine `rolloutEngine` names (zhinao/rollout/): all prompts of a step in one
call, sampled (at `temperature`) and, for ReMax, greedy, stopping at <|im_end|>, <eod> or <|im_start|>.
The checked reward is measured on held-out prompts before training (the SFT policy) and after.
"""

import io
import logging
import time

import numpy as np
import torch

from zhinao import reward_guard
from zhinao.alignment import ppo, remax
from zhinao.alignment.data import TRAIN, head_prompts, open_stream, pair_sets, prompt_sets
from zhinao.alignment.models import frozen, load_causal_lm, load_reward_model
from zhinao.alignment.preference import preference_batch, preference_loss_fn
from zhinao.alignment.rollout import evaluate, sampling_of
from zhinao.alignment.scoring import Scorer
from zhinao.artifacts import StageOutput
from zhinao.chat import ChatEncoder
from zhinao.config.rlhf import RLHFParams
from zhinao.config.runtime import StageRuntime
from zhinao.data.prepare_records import prepare_record_sets
from zhinao.data.token_stream import resume_stream
from zhinao.rollout.factory import build_rollout_engine
from zhinao.tokenizer import load as load_tokenizer
from zhinao.training.loop import Schedule, StepResult, TrainingLoop
from zhinao.training.session import TrainingSession

Params = RLHFParams
log = logging.getLogger(__name__)


def run(rt: StageRuntime, params: RLHFParams) -> None:
    session = TrainingSession(rt, keep_checkpoints=params.keep_checkpoints)
    env, device = session.env, session.device
    online = params.algorithm in ("remax", "ppo")
    need = (
        ["policy"]
        + (["prompts"] if online else ["preferences"])
        + (["reward"] if online and params.rm_weight > 0 else [])
    )
    for name in need:
        if name not in rt.inputs:
            raise SystemExit(f"rlhf stage ({params.algorithm}) needs inputs.{name}")
    base = StageOutput.at(rt.inputs["policy"]).fetch_hf(session.workdir / "policy")
    policy_dir, tok_dir = base.model_dir, base.tokenizer_dir
    tokenizer = load_tokenizer(tok_dir)
    enc, pad = ChatEncoder(tokenizer), tokenizer.pad_token_id
    with session.model_construction(params):  # ZeRO-3 (DPO/ORPO only) partitions the policy as it loads
        policy = load_causal_lm(policy_dir, params.attention)
    ref = load_causal_lm(policy_dir, params.attention)
    rm, rm_dir = None, None
    if "reward" in rt.inputs:
        rm_dir = StageOutput.at(rt.inputs["reward"]).fetch_hf(session.workdir / "reward").model_dir
        rm = load_reward_model(rm_dir, params.attention, pad)

    # Held-out prompts: the first evalPrompts of inputs.evalPrompts, else (online) of inputs.prompts,
    # which then leaves them out of training. Training data: prepared into a record set, streamed.
    eval_prompts: list[dict] = []
    if "evalPrompts" in rt.inputs:
        eval_prompts = head_prompts(rt.inputs["evalPrompts"], enc, params, params.eval_prompts)
    elif params.eval_prompts and online:
        eval_prompts = head_prompts(rt.inputs["prompts"], enc, params, params.eval_prompts)
    can_eval = bool(eval_prompts) and (params.rules or rm is not None)
    if online:
        skip = set() if "evalPrompts" in rt.inputs else {tuple(p["_place"]) for p in eval_prompts}
        produce = prompt_sets(rt.inputs["prompts"], enc, params, rank=env.rank, world_size=env.world_size, skip=skip)
    else:
        produce = pair_sets(
            rt.inputs["preferences"], tokenizer, params, rank=env.rank, world_size=env.world_size, eval_fraction=0
        )
    prepared = prepare_record_sets(session, session.output, [TRAIN], produce, params=params.stream)[TRAIN]
    n_items = prepared.records
    if not n_items and not online:
        raise SystemExit("no preference pair fits maxLen")
    if not n_items:
        held = prepared.counts.get("held_out", 0)
        raise SystemExit(
            f"no training prompt: {held} of inputs.prompts are the held-out evalPrompts={params.eval_prompts} and "
            f"{prepared.counts.get('dropped', 0)} do not fit maxPromptLen={params.max_prompt_len}"
            + ("; lower evalPrompts or pass inputs.evalPrompts" if held else "")
        )
    items = open_stream(session, TRAIN, params)

    steps_per_rollout = params.ppo_epochs if params.algorithm == "ppo" else 1
    if params.algorithm == "ppo":
        # The critic starts from the RM when there is one.
        model, groups = ppo.actor_critic(policy, rm_dir or policy_dir, params)
    else:
        model, groups = policy, None
    torch.manual_seed(params.seed + env.rank)  # rollouts sample: equal seeds, equal runs (resume restores it)
    total = params.max_steps * steps_per_rollout
    engine = session.build_engine(model, params, warmup=int(params.warmup_ratio * total), total=total, groups=groups)
    # Frozen models are placed the way the engine holds the policy (sharded under FSDP2).
    ref = frozen(ref, params, device, engine)
    rm = frozen(rm, params, device, engine) if rm is not None else None
    scorer = Scorer(params, enc, rm, device)
    actor = (lambda: engine.model.policy) if params.algorithm == "ppo" else (lambda: engine.model)
    loop = TrainingLoop(session, engine, Schedule.of(params, params.max_steps))
    meta = loop.resume()
    start = meta.get("step", 0)
    resume_stream(items, meta, samples_done=start * params.micro_batch_size * params.grad_accum_steps)
    kl_control = reward_guard.KLController(
        coef=meta.get("kl_coef", params.kl_coef), target=params.kl_target, horizon=params.kl_horizon
    )
    rollouts = None  # online training and held-out evaluation (DPO/ORPO too, given evalPrompts) generate
    if online or can_eval:
        rollouts = build_rollout_engine(
            params, model_dir=str(policy_dir), tokenizer=tokenizer, device=device, full_weights=engine.full_weights
        )
        rollouts.sync(actor())
    if start == 0 and can_eval:  # on every rank: under FSDP2 the forwards are collective
        meta["eval_before"] = evaluate(rollouts, eval_prompts, scorer, params, tokenizer, device)
    log.info(
        "%s on %d %s (%d held-out prompts), steps %d..%d",
        params.algorithm,
        n_items,
        "prompts" if online else "pairs",
        len(eval_prompts),
        start + 1,
        params.max_steps,
    )

    def step(index: int) -> StepResult:
        chunks = [items.take(params.micro_batch_size) for _ in range(params.grad_accum_steps)]
        stop = False
        if online:
            method = remax if params.algorithm == "remax" else ppo
            began = time.perf_counter()
            gen = rollouts.generate(
                [p["_ids"] for c in chunks for p in c],
                sampled=1,
                greedy=method is remax,
                sampling=sampling_of(params),
            )
            gen_seconds = time.perf_counter() - began
            results, at = [], 0
            step_params = params.model_copy(update={"kl_coef": kl_control.coef})
            for c in chunks:
                generated = (gen.sampled[at : at + len(c)], gen.greedy[at : at + len(c)])[: 2 if method is remax else 1]
                # In the update's precision: PPO's old log-probs must match the ones it recomputes.
                with engine.inference() as forward:
                    results.append(method.rollout(forward, ref, c, generated, scorer, step_params, tokenizer, device))
                at += len(c)
            batches = [r[0] for r in results]
            extra = {k: float(np.mean([r[1][k] for r in results])) for k in results[0][1]}
            extra.update(generation_seconds=gen_seconds, kl_coef=kl_control.coef)
            kl_all = float(np.mean(session.gather(extra["kl"])))  # every rank takes the same decisions
            kl_control.update(kl_all, len(chunks) * params.micro_batch_size * env.world_size)
            if params.kl_stop is not None and kl_all > params.kl_stop:
                meta["stopped"] = {"step": index + 1, "kl": kl_all}
                stop = True
                log.info("step %d: KL %.3f > klStop %.3f, stopping", index + 1, kl_all, params.kl_stop)
            fn = method.loss_fn(params)
            for _ in range(steps_per_rollout):
                loss, grad_norm = engine.train_step(batches, loss_fn=fn)
            rollouts.sync(actor())
        else:
            margins: list[torch.Tensor] = []
            batches = [preference_batch(c, pad, device) for c in chunks]
            loss, grad_norm = engine.train_step(batches, loss_fn=preference_loss_fn(params, ref, margins))
            margin = torch.cat(margins)
            extra = {"reward_margin": margin.mean().item(), "pref_accuracy": (margin > 0).float().mean().item()}
        return StepResult(
            loss=loss,
            grad_norm=grad_norm,
            tokens=sum(int(b["attention_mask"].sum()) for b in batches),
            samples=sum(len(c) for c in chunks),
            extra=extra,
            stop=stop,
        )

    loop.run(step, checkpoint_meta=lambda _: {"kl_coef": kl_control.coef, "data": items.state_dict()})
    items.close()

    eval_after = None
    if can_eval:
        rollouts.sync(actor())  # offline steps do not sync
        eval_after = evaluate(rollouts, eval_prompts, scorer, params, tokenizer, device)
    hf = session.export_hf(engine, params, tokenizer_dir=tok_dir)
    session.upload_metrics()
    if env.is_main:
        steps = session.output.step_records()
        summary = {
            "algorithm": params.algorithm,
            "steps": len(steps),
            "loss_first": steps[0]["loss"],
            "loss_last": steps[-1]["loss"],
            "eval_prompts": len(eval_prompts),
            "eval_before": meta.get("eval_before"),
            "eval_after": eval_after,
            "hf": hf,
            "checkpoints": session.output.checkpoints_url,
            "metrics": session.output.metrics_url,
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
        session.output.put_report("rlhf.png", rlhf_png(steps, summary))
        session.output.put_report("rlhf.md", rlhf_markdown(summary).encode())
        session.output.write_summary(summary)
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


# ------------------------------------------------------------------------------------- report


def rlhf_png(steps: list[dict], s: dict) -> bytes:
    from zhinao.plots import plt

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
