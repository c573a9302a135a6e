"""Long-context extension stage (report section 3.1.3): RoPE base change + continual pretraining at
long sequence lengths, with ring-attention sequence parallelism, then a needle-in-a-haystack eval.

inputs:  model   a pretrain (or earlier longctx) output prefix; its hf/ is loaded with from_pretrained
         corpus  JSONL documents or a data-stage output: packed into long sequences, the synthetic
                 long QA data and the needle haystack
output:  tokens/ sft/long-qa.jsonl checkpoints/ hf/ metrics/ report/loss.png report/needle.png
         report/needle.json summary.json
"""

import json
import logging

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from zhinao.artifacts import StageOutput
from zhinao.config.longctx import LongContextParams
from zhinao.config.runtime import StageRuntime
from zhinao.corpus import read_documents
from zhinao.data.packing import TOKEN_DTYPE, pack_source
from zhinao.data.token_shards import Shard, TokenIndex, shard_bytes, shard_name
from zhinao.data.token_stream import open_token_stream, resume_stream
from zhinao.longctx import needle
from zhinao.longctx.data import SourceDocument, mix_sequences, render_chat, synthesize_long_qa
from zhinao.longctx.resume_layout import LayoutMismatch, resume_layout
from zhinao.longctx.rope import apply_rope_base, ensure_fp32_inv_freq
from zhinao.longctx.sequence_parallel import (
    SequenceParallel,
    activate_sequence_parallel,
    init_sequence_parallel,
    sequence_parallel_lm_loss,
)
from zhinao.model import attention_implementation
from zhinao.plots import loss_curve_png
from zhinao.storage import ObjectStore, open_store
from zhinao.tokenizer import EOD
from zhinao.tokenizer import load as load_tokenizer
from zhinao.training.causal_lm import causal_lm_step
from zhinao.training.loop import Schedule, TrainingLoop, tokens_trained
from zhinao.training.session import TrainingSession

Params = LongContextParams
log = logging.getLogger(__name__)
SFT_KEY = "sft/long-qa.jsonl"


def build_data(corpus: ObjectStore, tokenizer, out: StageOutput, params: LongContextParams) -> TokenIndex:
    """Pack the corpus into seqLen sequences per source, write the synthetic long QA set, and mix."""
    docs = list(read_documents(corpus, text_field=params.text_field, source_field=params.source_field))
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    eod = tokenizer.convert_tokens_to_ids(EOD)
    by_source: dict[str, list[list[int]]] = {}
    for doc in docs:
        by_source.setdefault(doc.source, []).append(encode(doc.text))
    packed = [pack_source(by_source[s], seq_len=params.seq_len, eod_id=eod) for s in sorted(by_source)]
    corpus_seqs = np.concatenate([p for p in packed if len(p)] or [np.empty((0, params.seq_len), TOKEN_DTYPE)])
    if not len(corpus_seqs):
        raise SystemExit(f"corpus {corpus.uri} yields no sequence of {params.seq_len} tokens")

    # The QA contexts leave room for the questions and answers inside one training sequence.
    n_rows = max(params.synthetic_samples, 1 if params.synthetic_mix else 0)
    rows = synthesize_long_qa(
        [SourceDocument(d.text, d.source) for d in docs],
        n_samples=n_rows,
        n_questions=params.synthetic_questions,
        budget_tokens=int(params.seq_len * 0.8),
        count_tokens=lambda t: len(encode(t)),
        seed=params.seed,
    )
    out.store.put_bytes(SFT_KEY, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    synthetic = pack_source((encode(render_chat(r["messages"])) for r in rows), seq_len=params.seq_len, eod_id=eod)
    data = mix_sequences(corpus_seqs, synthetic, ratio=params.synthetic_mix, seed=params.seed)
    key = out.put_token_shard(shard_name("longctx", rank=0, n=0), shard_bytes(data))
    index = TokenIndex(
        seq_len=params.seq_len,
        vocab_size=len(tokenizer),
        shards=[Shard(key, "mixed", int(len(data)))],
        documents=len(docs),
        extra={
            "corpus_sequences": int(len(corpus_seqs)),
            "synthetic_sequences": int(len(data) - len(corpus_seqs)),
            "synthetic_conversations": len(rows),
        },
    )
    out.write_tokens_index(index)
    return index


def haystack_documents(corpus: ObjectStore, params: LongContextParams):
    """The needle haystack: a fresh stream of the corpus documents' texts per call (never one string)."""
    return lambda: (
        d.text for d in read_documents(corpus, text_field=params.text_field, source_field=params.source_field)
    )


def run_needle(
    model, tokenizer, corpus: ObjectStore, out: StageOutput, params: LongContextParams, sp: SequenceParallel
) -> dict:
    """With sequence parallelism every rank of the first data-parallel group evaluates, each cell
    across the group (prefill through the ring, the KV cache spread over its ranks); without, one
    device's attention. Rank 0 writes the report."""
    if sp.size > 1:
        model.set_attn_implementation(activate_sequence_parallel(sp))
    else:
        model.set_attn_implementation(attention_implementation(params.attention))
    model.eval()
    n = params.needle
    lengths, depths = needle.grid(
        max_length=params.max_positions,
        lengths=n.lengths,
        min_length=n.min_length,
        num_lengths=n.num_lengths,
        num_depths=n.num_depths,
    )
    result = needle.evaluate(
        model,
        tokenizer,
        haystack_documents(corpus, params),
        lengths=lengths,
        depths=depths,
        preset=n.preset,
        max_new_tokens=n.max_new_tokens,
        seed=params.seed,
        sp=sp,
    )
    if sp.rank != 0:
        return result
    result["sequence_parallel"] = sp.size
    out.put_report("needle.json", json.dumps(result, indent=2, ensure_ascii=False).encode())
    out.put_report(
        "needle.png", needle.heatmap_png(result, title=f"needle ({n.preset}), rope base {params.rope_theta:g}")
    )
    log.info("needle in a haystack: average %.2f over %d cells", result["average"], len(result["cells"]))
    return result


def run(rt: StageRuntime, params: LongContextParams) -> None:
    for name in ("model", "corpus"):
        if name not in rt.inputs:
            raise SystemExit(f"longctx stage needs inputs.{name}")
    session = TrainingSession(rt, keep_checkpoints=params.keep_checkpoints)
    env = session.env
    sp = init_sequence_parallel(params.sequence_parallel, device_type=session.device.type)
    base = StageOutput.at(rt.inputs["model"]).fetch_hf(session.workdir / "base")
    model_dir = base.model_dir
    tokenizer = load_tokenizer(base.tokenizer_dir)
    corpus = open_store(rt.inputs["corpus"])

    if env.is_main and not session.output.has_tokens():
        build_data(corpus, tokenizer, session.output, params)
    session.barrier()
    # Every rank of a sequence-parallel group reads the same sequences and trains on its shard.
    stream = open_token_stream(
        session.output,
        session.workdir / "tokens",
        seq_len=params.seq_len,
        seed=params.seed,
        rank=sp.dp_rank,
        world_size=sp.dp_size,
        params=params.stream,
    )

    attn = activate_sequence_parallel(sp) if sp.size > 1 else attention_implementation(params.attention)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation=attn)
    model.config.use_cache = False
    old_theta = apply_rope_base(model, params.rope_theta, max_position_embeddings=params.max_positions)
    # DDP replicates over every rank; FSDP2 shards over the ("dp", "sp") mesh flattened.
    engine = session.build_engine(
        model, params, warmup=params.warmup_steps, total=params.max_steps, shard_mesh=sp.shard_mesh
    )
    ensure_fp32_inv_freq(engine.model)  # DeepSpeed bf16 casts buffers; the report keeps them fp32
    loop = TrainingLoop.for_model(session, engine, model, Schedule.of(params, params.max_steps), seq_len=params.seq_len)
    meta = loop.resume()
    start = meta.get("step", 0)
    try:
        change = resume_layout(
            meta, world_size=env.world_size, sequence_parallel=sp.size, elastic=params.stream.elastic
        )
    except LayoutMismatch as exc:
        raise SystemExit(str(exc)) from None
    if change:
        log.info(change)
    resume_stream(stream, meta, samples_done=start * params.micro_batch_size * params.grad_accum_steps)
    log.info(
        "long-context training: rope base %g -> %g, %d sequences of %d tokens, sequence parallel %d x data "
        "parallel %d, steps %d..%d",
        old_theta,
        params.rope_theta,
        len(stream),
        params.seq_len,
        sp.size,
        sp.dp_size,
        start + 1,
        params.max_steps,
    )

    tokens_per_step = params.micro_batch_size * params.seq_len * params.grad_accum_steps // sp.size
    loop.run(
        causal_lm_step(
            engine,
            stream,
            params,
            device=session.device,
            tokens_per_step=tokens_per_step,
            # Each rank's share of its group's loss (see zhinao.longctx.sequence_parallel).
            loss_fn=(lambda model, batch: sequence_parallel_lm_loss(model, batch, sp)) if sp.size > 1 else None,
        ),
        checkpoint_meta=lambda step: {
            "sequence_parallel": sp.size,
            "tokens": meta.get("tokens", 0) + (step - start) * tokens_per_step * env.world_size,
            "data": stream.state_dict(),
        },
    )
    stream.close()

    # The export loads anywhere with standard attention; the ring is only this job's business.
    if sp.size > 1:
        engine.model.set_attn_implementation(attention_implementation("sdpa"))
    hf = session.export_hf(engine, params, tokenizer_dir=base.tokenizer_dir)
    session.upload_metrics()
    result = None
    if params.needle.enabled:
        # Gathered once on every rank, so the first group alone runs the needle with no FSDP collective.
        with engine.full_weights():
            if sp.dp_rank == 0 and (sp.size > 1 or env.is_main):
                result = run_needle(engine.model, tokenizer, corpus, session.output, params, sp)
    if env.is_main:
        write_summary(session.output, params, env.world_size, sp, hf, old_theta, result)
    session.close()


def write_summary(
    out: StageOutput,
    params: LongContextParams,
    world_size: int,
    sp: SequenceParallel,
    hf_uri: str | None,
    old_theta: float,
    needle_result: dict | None,
) -> dict:
    steps = out.step_records()
    train_seconds = sum(r["step_seconds"] for r in steps)
    tokens = tokens_trained(steps, world_size)
    index = out.read_tokens_index()
    summary = {
        "steps": len(steps),
        "tokens": tokens,
        "seq_len": params.seq_len,
        "rope_theta_before": old_theta,
        "rope_theta": params.rope_theta,
        "max_position_embeddings": params.max_positions,
        "sequence_parallel": sp.size,
        "data_parallel": sp.dp_size,
        "corpus_sequences": index.extra.get("corpus_sequences"),
        "synthetic_sequences": index.extra.get("synthetic_sequences"),
        "loss_first": steps[0]["loss"] if steps else None,
        "loss_last": steps[-1]["loss"] if steps else None,
        "tokens_per_second": tokens / train_seconds if train_seconds else None,
        "mfu_mean": float(np.mean([r["mfu"] for r in steps if r.get("mfu") is not None] or [float("nan")])),
        "needle_average": needle_result["average"] if needle_result else None,
        "checkpoints": out.checkpoints_url,
        "hf": hf_uri,
        "sft": out.store.url(SFT_KEY),
        "metrics": out.metrics_url,
        "loss_curve": out.report_url("loss.png"),
        "needle": out.report_url("needle.png") if needle_result else None,
    }
    if steps:
        out.put_report("loss.png", loss_curve_png(steps, title=f"long context (seqLen {params.seq_len})"))
    out.write_summary(summary)
    return summary
