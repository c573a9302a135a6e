"""SFT stage: curate chat data, pack it, fine-tune the previous stage's model on the assistant turns.

inputs:  model  (a pretrain/SFT output prefix: its hf/ export is loaded with from_pretrained)
         data   (SFT JSONL: {"messages": [{"role", "content"}, ...], "source"?, "category"?, ...})
output:  checkpoints/ hf/ metrics/ report/sft_loss.png summary.json
"""

import logging

import numpy as np
import torch

from zhinao.alignment.data import read_jsonl, split_holdout, steps_for
from zhinao.alignment.models import load_causal_lm
from zhinao.artifacts import StageOutput
from zhinao.chat import ChatEncoder, validate_sft_messages
from zhinao.config.runtime import StageRuntime
from zhinao.config.sft import SFTParams
from zhinao.data import sft_tools
from zhinao.data.packing import batch_indices
from zhinao.data.sft_packing import Packed, block_causal_mask, pack_examples
from zhinao.losses import lm_loss
from zhinao.plots import loss_curve_png
from zhinao.tokenizer import load as load_tokenizer
from zhinao.training.loop import Schedule, StepResult, TrainingLoop
from zhinao.training.session import TrainingSession

Params = SFTParams
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- SFT data


def curate(records: list[dict], params: SFTParams) -> tuple[list[dict], dict]:
    """Source rating filter, dedup, label reweighting; returns (records, counts for the summary)."""
    stats = {"records_in": len(records)}
    good = []
    for r in records:
        try:
            validate_sft_messages(r.get(params.messages_field) or [])
            good.append({**r, "messages": r[params.messages_field]})
        except ValueError as e:
            log.debug("dropping record: %s", e)
    stats["invalid"] = len(records) - len(good)
    if params.min_source_rating is not None:
        ratings = {**sft_tools.source_ratings(good), **params.source_ratings}
        good, dropped = sft_tools.drop_low_sources(good, ratings, params.min_source_rating)
        stats["dropped_sources"] = dropped
    if params.dedup:
        good, stats["duplicates"] = sft_tools.dedup(good)
    if params.label_weights:
        good = sft_tools.reweight(good, params.label_weights, seed=params.seed)
    stats["records_used"] = len(good)
    return good, stats


def encode_and_pack(records: list[dict], tokenizer, params: SFTParams) -> Packed:
    enc = ChatEncoder(tokenizer)
    examples = []
    for r in records:
        e = enc.conversation(r["messages"], system=params.system_prompt)
        examples.append((e.input_ids, e.labels))
    return pack_examples(examples, max_len=params.max_len, pad_id=tokenizer.pad_token_id)


def to_batch(packed: Packed, rows: np.ndarray, mode: str, attention: str, device: torch.device) -> dict:
    batch = {
        "input_ids": torch.from_numpy(packed.input_ids[rows]).to(device),
        "labels": torch.from_numpy(packed.labels[rows]).to(device),
        "position_ids": torch.from_numpy(packed.position_ids(mode, rows)).to(device),
    }
    if mode == "document" and attention != "flash_attention_2":
        allowed = torch.from_numpy(block_causal_mask(packed.doc_ids[rows])).to(device)
        batch["attention_mask"] = torch.zeros(allowed.shape, device=device).masked_fill(
            ~allowed, torch.finfo(torch.float32).min
        )
    return batch


def sft_loss(model, batch: dict) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return lm_loss(model(**inputs).logits, batch["labels"])


@torch.no_grad()
def eval_loss(model, packed: Packed, mode: str, attention: str, device, batch: int) -> float | None:
    if not len(packed):
        return None
    model.eval()
    losses, weights = [], []
    for start in range(0, len(packed), batch):
        rows = np.arange(start, min(start + batch, len(packed)))
        b = to_batch(packed, rows, mode, attention, device)
        losses.append(sft_loss(model, b).item())
        weights.append(int((b["labels"][:, 1:] != -100).sum()))
    return float(np.average(losses, weights=weights))


# ------------------------------------------------------------------------------------------- run


def run(rt: StageRuntime, params: SFTParams) -> None:
    session = TrainingSession(rt, keep_checkpoints=params.keep_checkpoints)
    env = session.env
    for name in ("model", "data"):
        if name not in rt.inputs:
            raise SystemExit(f"sft stage needs inputs.{name}")
    base = StageOutput.at(rt.inputs["model"]).fetch_hf(session.workdir / "input")
    tokenizer = load_tokenizer(base.tokenizer_dir)
    records, data_stats = curate(read_jsonl(rt.inputs["data"]), params)
    train_records, eval_records = split_holdout(records, params.eval_fraction, params.seed)
    packed = encode_and_pack(train_records, tokenizer, params)
    held = encode_and_pack(eval_records, tokenizer, params)
    if not len(packed):
        raise SystemExit(f"no SFT example fits maxLen={params.max_len}")
    data_stats.update(
        rows=len(packed),
        skipped_too_long=packed.skipped,
        target_tokens=int((packed.labels != -100).sum()),
        tokens=int((packed.doc_ids >= 0).sum()),
    )

    model = load_causal_lm(base.model_dir, params.attention)
    attention = model.config._attn_implementation
    total = steps_for(len(packed), params, env.world_size)
    engine = session.build_engine(model, params, warmup=int(params.warmup_ratio * total), total=total)
    loop = TrainingLoop.for_model(session, engine, model, Schedule.of(params, total), seq_len=params.max_len)
    meta = loop.resume()
    start = meta.get("step", 0)
    if start == 0:
        meta["eval_loss_before"] = eval_loss(
            engine.model, held, params.packing, attention, session.device, params.micro_batch_size
        )
    log.info(
        "SFT on %d rows of %d tokens (%d conversations, %s packing), steps %d..%d",
        len(packed),
        params.max_len,
        len(train_records),
        params.packing,
        start + 1,
        total,
    )

    def step(index: int) -> StepResult:
        batches = [
            to_batch(
                packed,
                batch_indices(
                    n_sequences=len(packed),
                    step=index,
                    micro_step=m,
                    rank=env.rank,
                    world_size=env.world_size,
                    micro_batch=params.micro_batch_size,
                    grad_accum=params.grad_accum_steps,
                    seed=params.seed,
                ),
                params.packing,
                attention,
                session.device,
            )
            for m in range(params.grad_accum_steps)
        ]
        loss, grad_norm = engine.train_step(batches, loss_fn=sft_loss)
        return StepResult(
            loss=loss,
            grad_norm=grad_norm,
            tokens=sum(int((b["input_ids"] != tokenizer.pad_token_id).sum()) for b in batches),
            samples=params.micro_batch_size * params.grad_accum_steps,
            extra={"target_tokens": sum(int((b["labels"] != -100).sum()) for b in batches)},
        )

    loop.run(step)

    eval_after = eval_loss(engine.model, held, params.packing, attention, session.device, params.micro_batch_size)
    hf = session.export_hf(engine, params, tokenizer_dir=base.tokenizer_dir)
    session.upload_metrics()
    if env.is_main:
        steps = session.output.step_records()
        summary = {
            "steps": len(steps),
            "loss_first": steps[0]["loss"],
            "loss_last": steps[-1]["loss"],
            "eval_loss_before": meta.get("eval_loss_before"),
            "eval_loss_after": eval_after,
            "packing": params.packing,
            "data": data_stats,
            "hf": hf,
            "checkpoints": session.output.checkpoints_url,
            "metrics": session.output.metrics_url,
            "loss_curve": session.output.report_url("sft_loss.png"),
            "tokens_per_second": sum(r["tokens"] for r in steps)
            * env.world_size
            / max(1e-9, sum(r["step_seconds"] for r in steps)),
        }
        session.output.put_report("sft_loss.png", loss_curve_png(steps, title=f"SFT ({params.packing} packing)"))
        session.output.put_report("sft.md", sft_markdown(summary).encode())
        session.output.write_summary(summary)
    session.close()


def sft_markdown(s: dict) -> str:
    lines = [
        "## SFT",
        "",
        f"Training loss {s['loss_first']:.3f} -> {s['loss_last']:.3f} over {s['steps']} steps "
        f"({s['packing']} packing, {s['data']['rows']} rows, {s['data']['target_tokens']} target tokens).",
    ]
    if s["eval_loss_after"] is not None:
        lines.append(f"Held-out loss {s['eval_loss_before']:.3f} -> {s['eval_loss_after']:.3f}.")
    return "\n".join(lines + ["", "![SFT loss](sft_loss.png)", ""])
