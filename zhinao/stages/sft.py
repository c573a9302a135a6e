"""SFT stage: curate chat data, pack it, fine-tune the previous stage's model on the assistant turns.

inputs:  model  (a pretrain/SFT output prefix: its hf/ export is loaded with from_pretrained)
         data   (SFT JSONL: {"messages": [{"role", "content"}, ...], "source"?, "category"?, ...})
output:  checkpoints/ hf/ metrics/ report/sft_loss.png summary.json
"""

import logging

import numpy as np
import torch

from zhinao.alignment.data import EVAL, TRAIN, open_stream, refuse_epochs_at_another_world_size, steps_for, whole_set
from zhinao.alignment.models import load_causal_lm
from zhinao.alignment.sft_data import sft_sets
from zhinao.artifacts import StageOutput
from zhinao.config.runtime import StageRuntime
from zhinao.config.sft import SFTParams
from zhinao.data.prepare_records import prepare_record_sets
from zhinao.data.sft_packing import Packed, block_causal_mask, flatten_varlen, pack_rows
from zhinao.data.token_stream import resume_stream
from zhinao.losses import lm_loss
from zhinao.plots import loss_curve_png
from zhinao.tokenizer import load as load_tokenizer
from zhinao.training.loop import Schedule, StepResult, TrainingLoop
from zhinao.training.session import TrainingSession

Params = SFTParams
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- batches


def rows_of(records: list[dict], params: SFTParams, pad_id: int) -> Packed:
    """The packed rows of streamed row records (zhinao.alignment.sft_data)."""
    return pack_rows([r["examples"] for r in records], max_len=params.max_len, pad_id=pad_id)


def varlen_attention(attention: str) -> bool:
    """Whether the model's attention implementation takes flash-attn varlen boundaries
    (flash_attention_2/3/4 and the hub's flash kernels)."""
    return "flash" in attention


def to_batch(packed: Packed, rows: np.ndarray, mode: str, attention: str, device: torch.device) -> dict:
    """The model inputs (and labels) of micro-batch `rows`; `document` packing isolates the examples
    at any micro-batch size: varlen boundaries on flash attention, a block-causal mask otherwise."""
    if mode == "document" and varlen_attention(attention):
        flat = flatten_varlen(packed.input_ids[rows], packed.labels[rows], packed.doc_ids[rows])
        bounds = torch.from_numpy(flat.cu_seqlens).to(device)
        return {
            "input_ids": torch.from_numpy(flat.input_ids).to(device),
            "labels": torch.from_numpy(flat.labels).to(device),
            "position_ids": torch.from_numpy(flat.position_ids).to(device),
            "cu_seq_lens_q": bounds,
            "cu_seq_lens_k": bounds,
            "max_length_q": flat.max_seqlen,
            "max_length_k": flat.max_seqlen,
        }
    batch = {
        "input_ids": torch.from_numpy(packed.input_ids[rows]).to(device),
        "labels": torch.from_numpy(packed.labels[rows]).to(device),
        "position_ids": torch.from_numpy(packed.position_ids(mode, rows)).to(device),
    }
    if mode == "document":
        allowed = torch.from_numpy(block_causal_mask(packed.doc_ids[rows])).to(device)
        batch["attention_mask"] = torch.zeros(allowed.shape, device=device).masked_fill(
            ~allowed, torch.finfo(torch.float32).min
        )
    return batch


def sft_loss(model, batch: dict) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return lm_loss(model(**inputs).logits, batch["labels"])


def eval_loss(model, chunks, params: SFTParams, pad_id: int, attention: str, device) -> float | None:
    """Mean loss over held-out rows given chunk by chunk (a micro-batch each); None when there are none.
    `model` from `Engine.inference`: every rank runs the same rows."""
    losses, weights = [], []
    for chunk in chunks:
        packed = rows_of(chunk, params, pad_id)
        b = to_batch(packed, np.arange(len(packed)), params.packing, attention, device)
        losses.append(sft_loss(model, b).item())
        weights.append(int((b["labels"][:, 1:] != -100).sum()))
    return float(np.average(losses, weights=weights)) if losses else None


# ------------------------------------------------------------------------------------------- run


def run(rt: StageRuntime, params: SFTParams) -> None:
    session = TrainingSession(rt, keep_checkpoints=params.keep_checkpoints)
    env = session.env
    for name in ("model", "data"):
        if name not in rt.inputs:
            raise SystemExit(f"sft stage needs inputs.{name}")
    base = StageOutput.at(rt.inputs["model"]).fetch_hf(session.workdir / "input")
    tokenizer = load_tokenizer(base.tokenizer_dir)
    sets = prepare_record_sets(
        session,
        session.output,
        [TRAIN, EVAL],
        sft_sets(session, rt.inputs["data"], tokenizer, params),
        params=params.stream,
    )
    n_rows, n_held = sets[TRAIN].records, sets[EVAL].records
    if not n_rows:
        raise SystemExit(f"no SFT example fits maxLen={params.max_len}")
    data_stats = {**sets[TRAIN].counts, "rows": n_rows, "held_out_rows": n_held}
    train = open_stream(session, TRAIN, params)

    with session.model_construction(params):
        model = load_causal_lm(base.model_dir, params.attention)
    attention = model.config._attn_implementation
    total = steps_for(n_rows, params, env.world_size)
    engine = session.build_engine(model, params, warmup=int(params.warmup_ratio * total), total=total)
    loop = TrainingLoop.for_model(session, engine, model, Schedule.of(params, total), seq_len=params.max_len)
    meta = loop.resume()
    start = meta.get("step", 0)
    refuse_epochs_at_another_world_size(meta, params, env.world_size, stage="sft")
    resume_stream(train, meta, samples_done=start * params.micro_batch_size * params.grad_accum_steps)
    pad = tokenizer.pad_token_id

    def held_out() -> float | None:
        chunks = whole_set(session, EVAL, params, chunk=params.micro_batch_size) if n_held else []
        with engine.inference() as forward:
            return eval_loss(forward, chunks, params, pad, attention, session.device)

    if start == 0:
        meta["eval_loss_before"] = held_out()
    log.info(
        "SFT on %d rows of %d tokens (%d conversations, %s packing), steps %d..%d",
        n_rows,
        params.max_len,
        data_stats.get("records_used", 0),
        params.packing,
        start + 1,
        total,
    )

    def step(index: int) -> StepResult:
        batches = []
        for _ in range(params.grad_accum_steps):
            packed = rows_of(train.take(params.micro_batch_size), params, pad)
            batches.append(to_batch(packed, np.arange(len(packed)), params.packing, attention, session.device))
        loss, grad_norm = engine.train_step(batches, loss_fn=sft_loss)
        return StepResult(
            loss=loss,
            grad_norm=grad_norm,
            tokens=sum(int((b["input_ids"] != pad).sum()) for b in batches),
            samples=params.micro_batch_size * params.grad_accum_steps,
            extra={"target_tokens": sum(int((b["labels"] != -100).sum()) for b in batches)},
        )

    loop.run(step, checkpoint_meta=lambda _: {"data": train.state_dict()})
    train.close()

    eval_after = held_out()
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
