"""Reward-model stage: a scalar head on the SFT model, trained with the pairwise Bradley-Terry loss.

inputs:  model        (an SFT output prefix; its hf/ export is loaded with a fresh score head)
         preferences  (JSONL: {"prompt": str | messages, "chosen": str, "rejected": str, "task"?, "margin"?})
output:  checkpoints/ hf/ (AutoModelForSequenceClassification, num_labels=1) metrics/
         report/rm_accuracy.png report/reward.md summary.json

The score of a (prompt, response) is the head's output at the last token of the chat-formatted
sequence (the response's trailing newline), as `Qwen2ForSequenceClassification` pools it.
"""

import io
import logging

import numpy as np
import torch

from zhinao.alignment.data import (
    EVAL,
    TRAIN,
    open_stream,
    pad_right,
    pair_sets,
    refuse_epochs_at_another_world_size,
    steps_for,
    whole_set,
)
from zhinao.alignment.models import load_reward_model
from zhinao.artifacts import StageOutput
from zhinao.config.reward import RewardParams
from zhinao.config.runtime import StageRuntime
from zhinao.data.prepare_records import prepare_record_sets
from zhinao.data.token_stream import resume_stream
from zhinao.losses import bradley_terry_loss, pairwise_accuracy
from zhinao.tokenizer import load as load_tokenizer
from zhinao.training.loop import Schedule, StepResult, TrainingLoop
from zhinao.training.session import TrainingSession

Params = RewardParams
log = logging.getLogger(__name__)


def pair_batch(pairs: list[dict], pad_id: int, device) -> dict:
    ids, mask = pad_right([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_id, device)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "margin": torch.tensor([p["margin"] for p in pairs], device=device),
    }


def scores(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected) of a pair batch."""
    r = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()
    n = len(batch["margin"])
    return r[:n], r[n:]


def held_out_accuracy(model, chunks, pad_id: int, device) -> tuple[float | None, float | None]:
    """(pairwise accuracy, mean BT loss) over held-out pairs given chunk by chunk; None when there are none.
    `model` from `Engine.inference`: every rank runs the same pairs."""
    right, losses, n = 0.0, 0.0, 0
    for chunk in chunks:
        c, r = scores(model, pair_batch(chunk, pad_id, device))
        right += pairwise_accuracy(c, r) * len(chunk)
        losses += bradley_terry_loss(c, r).item() * len(chunk)
        n += len(chunk)
    return (right / n, losses / n) if n else (None, None)


def run(rt: StageRuntime, params: RewardParams) -> None:
    session = TrainingSession(rt, keep_checkpoints=params.keep_checkpoints)
    env = session.env
    for name in ("model", "preferences"):
        if name not in rt.inputs:
            raise SystemExit(f"reward stage needs inputs.{name}")
    base = StageOutput.at(rt.inputs["model"]).fetch_hf(session.workdir / "input")
    tokenizer = load_tokenizer(base.tokenizer_dir)
    pad = tokenizer.pad_token_id
    sets = prepare_record_sets(
        session,
        session.output,
        [TRAIN, EVAL],
        pair_sets(
            rt.inputs["preferences"],
            tokenizer,
            params,
            rank=env.rank,
            world_size=env.world_size,
            eval_fraction=params.eval_fraction,
        ),
        params=params.stream,
    )
    n_train, n_held, dropped = sets[TRAIN].records, sets[EVAL].records, sets[TRAIN].counts.get("dropped", 0)
    if not n_train:
        raise SystemExit("no preference pair to train on (check maxLen and task)")
    train = open_stream(session, TRAIN, params)

    torch.manual_seed(params.seed)  # the new score head's init: equal seeds, equal heads
    with session.model_construction(params):
        model = load_reward_model(base.model_dir, params.attention, pad)
    total = steps_for(n_train, params, env.world_size)
    engine = session.build_engine(model, params, warmup=int(params.warmup_ratio * total), total=total)
    loop = TrainingLoop.for_model(session, engine, model, Schedule.of(params, total), seq_len=params.max_len)
    meta = loop.resume()
    start = meta.get("step", 0)
    refuse_epochs_at_another_world_size(meta, params, env.world_size, stage="reward")
    resume_stream(train, meta, samples_done=start * params.micro_batch_size * params.grad_accum_steps)

    def held_out() -> tuple[float | None, float | None]:
        chunks = whole_set(session, EVAL, params, chunk=params.micro_batch_size * 2) if n_held else []
        with engine.inference() as forward:
            return held_out_accuracy(forward, chunks, pad, session.device)

    if start == 0:
        meta["eval"] = [[0, *held_out()]]
    log.info(
        "reward model on %d pairs (%d held out, %d dropped), steps %d..%d",
        n_train,
        n_held,
        dropped,
        start + 1,
        total,
    )

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def loss_fn(m, batch):
        c, r = scores(m, batch)
        seen.append((c.detach(), r.detach()))
        return bradley_terry_loss(c, r + batch["margin"], params.margin)

    def step(index: int) -> StepResult:
        batches = [
            pair_batch(train.take(params.micro_batch_size), pad, session.device) for _ in range(params.grad_accum_steps)
        ]
        seen.clear()
        loss, grad_norm = engine.train_step(batches, loss_fn=loss_fn)
        c, r = torch.cat([s[0] for s in seen]), torch.cat([s[1] for s in seen])
        return StepResult(
            loss=loss,
            grad_norm=grad_norm,
            tokens=sum(int(b["attention_mask"].sum()) for b in batches),
            samples=len(c),
            extra={"rm_accuracy": pairwise_accuracy(c, r), "reward_margin": (c - r).mean().item()},
        )

    def evaluate(step: int) -> dict[str, float]:
        acc, loss = held_out()
        meta["eval"].append([step, acc, loss])  # the curve in the summary; it travels in checkpoints
        # The last step's accuracy is the summary's headline; the metrics log has the ones in between.
        return {"rm_eval_accuracy": acc} if acc is not None and step < total else {}

    loop.run(step, eval_fn=evaluate, checkpoint_meta=lambda _: {"data": train.state_dict()})
    train.close()

    hf = session.export_hf(engine, params, tokenizer_dir=base.tokenizer_dir)
    session.upload_metrics()
    if env.is_main:
        steps = session.output.step_records()
        evals = [e for e in meta["eval"] if e[1] is not None]
        summary = {
            "steps": len(steps),
            "pairs_train": n_train,
            "pairs_held_out": n_held,
            "pairs_dropped": dropped,
            "task": params.task,
            "loss_first": steps[0]["loss"],
            "loss_last": steps[-1]["loss"],
            "held_out_accuracy_before": evals[0][1] if evals else None,
            "held_out_accuracy": evals[-1][1] if evals else None,
            "held_out_loss": evals[-1][2] if evals else None,
            "eval_curve": evals,
            "hf": hf,
            "checkpoints": session.output.checkpoints_url,
            "metrics": session.output.metrics_url,
        }
        session.output.put_report("rm_accuracy.png", accuracy_png(steps, evals))
        session.output.put_report("reward.md", reward_markdown(summary).encode())
        session.output.write_summary(summary)
    session.close()


def accuracy_png(steps: list[dict], evals: list[list]) -> bytes:
    from zhinao.plots import plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    x = [s["step"] for s in steps]
    acc = np.array([s["rm_accuracy"] for s in steps])
    window = max(1, len(acc) // 20)
    smooth = np.convolve(acc, np.ones(window) / window, mode="valid")
    ax.plot(x[window - 1 :], smooth, label=f"train batch accuracy (mean of {window})", color="#1f77b4")
    if evals:
        ax.plot([e[0] for e in evals], [e[1] for e in evals], "o-", label="held-out pairwise accuracy", color="#d62728")
    ax.axhline(0.5, color="grey", ls=":", label="chance")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("accuracy")
    ax.set_title("reward model (Bradley-Terry)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def reward_markdown(s: dict) -> str:
    acc = s["held_out_accuracy"]
    text = f"{acc:.3f}" if acc is not None else "n/a"
    before = s["held_out_accuracy_before"]
    return "\n".join(
        [
            "## Reward model",
            "",
            f"Held-out pairwise accuracy {before if before is None else f'{before:.3f}'} (untrained head) -> {text} "
            f"on {s['pairs_held_out']} pairs after {s['steps']} steps on {s['pairs_train']} pairs (chance: 0.5).",
            "",
            "![RM accuracy](rm_accuracy.png)",
            "",
        ]
    )
