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
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from zhinao.config.longctx import LongContextParams
from zhinao.config.runtime import StageRuntime
from zhinao.corpus import read_documents
from zhinao.data.packing import TOKEN_DTYPE, pack_source
from zhinao.data.stream_order import PositionMismatch
from zhinao.data.token_shards import INDEX_KEY, Shard, TokenIndex, shard_bytes, shard_key
from zhinao.data.token_stream import TokenStream
from zhinao.longctx import needle
from zhinao.longctx.data import SourceDocument, mix_sequences, render_chat, synthesize_long_qa
from zhinao.longctx.rope import apply_rope_base, ensure_fp32_inv_freq
from zhinao.longctx.sequence_parallel import (
    SequenceParallel,
    activate_sequence_parallel,
    init_sequence_parallel,
    sequence_parallel_lm_loss,
)
from zhinao.metrics import flops_per_token
from zhinao.model import attention_implementation, matmul_params
from zhinao.report import loss_curve_png
from zhinao.storage import ObjectStore, open_store
from zhinao.tokenizer import EOD
from zhinao.tokenizer import load as load_tokenizer
from zhinao.training.engine import DDPEngine
from zhinao.training.pretrain_loop import train_steps
from zhinao.training.session import TrainingSession

Params = LongContextParams
log = logging.getLogger(__name__)
SFT_KEY = "sft/long-qa.jsonl"


class SequenceParallelEngine(DDPEngine):
    """DDP over all ranks; each rank's loss is its shard's share (see zhinao.longctx.sequence_parallel)."""

    def __init__(self, model, optimizer, scheduler, *, sp: SequenceParallel, **kwargs):
        super().__init__(model, optimizer, scheduler, **kwargs)
        self.sp = sp

    def train_step(self, micro_batches):
        return super().train_step(micro_batches, lambda model, batch: sequence_parallel_lm_loss(model, batch, self.sp))


def fetch_model(uri: str, dest: Path) -> Path:
    """Download <uri>/hf/ (or <uri> itself when it holds config.json) to a local directory."""
    store = open_store(uri)
    prefix = "hf/" if store.exists("hf/config.json") else ""
    if not store.exists(f"{prefix}config.json"):
        raise SystemExit(f"inputs.model {uri} holds neither hf/config.json nor config.json")
    dest.mkdir(parents=True, exist_ok=True)
    for key in store.list(prefix):
        if "/" not in key[len(prefix) :]:
            store.get_file(key, dest / key[len(prefix) :])
    return dest


def tokenizer_files(model_dir: Path, dest: Path) -> Path:
    """The tokenizer files of the input model, apart from its weights and config (they travel with the export)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in model_dir.iterdir():
        if path.is_file() and (
            path.name.startswith(("tokenizer", "special_tokens")) or path.name == "chat_template.jinja"
        ):
            (dest / path.name).write_bytes(path.read_bytes())
    return dest


def build_data(corpus: ObjectStore, tokenizer, out: ObjectStore, params: LongContextParams) -> TokenIndex:
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
    out.put_bytes(SFT_KEY, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    synthetic = pack_source((encode(render_chat(r["messages"])) for r in rows), seq_len=params.seq_len, eod_id=eod)
    data = mix_sequences(corpus_seqs, synthetic, ratio=params.synthetic_mix, seed=params.seed)
    key = shard_key("longctx", rank=0, n=0)
    out.put_bytes(key, shard_bytes(data))
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
    out.put_bytes(INDEX_KEY, index.to_json())
    return index


def haystack_text(corpus: ObjectStore, params: LongContextParams) -> str:
    return "\n".join(
        d.text for d in read_documents(corpus, text_field=params.text_field, source_field=params.source_field)
    )


def run_needle(model, tokenizer, corpus: ObjectStore, out: ObjectStore, params: LongContextParams) -> dict:
    """Rank 0 only: single-device attention (flash-attn or SDPA), so lengths are bounded by one device."""
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
        haystack_text(corpus, params),
        lengths=lengths,
        depths=depths,
        preset=n.preset,
        max_new_tokens=n.max_new_tokens,
    )
    out.put_bytes("report/needle.json", json.dumps(result, indent=2, ensure_ascii=False).encode())
    out.put_bytes(
        "report/needle.png", needle.heatmap_png(result, title=f"needle ({n.preset}), rope base {params.rope_theta:g}")
    )
    log.info("needle in a haystack: average %.2f over %d cells", result["average"], len(result["cells"]))
    return result


def run(rt: StageRuntime, params: LongContextParams) -> None:
    for name in ("model", "corpus"):
        if name not in rt.inputs:
            raise SystemExit(f"longctx stage needs inputs.{name}")
    session = TrainingSession(rt, keep_checkpoints=params.keep_checkpoints)
    env, out = session.env, session.out
    sp = init_sequence_parallel(params.sequence_parallel)
    model_dir = fetch_model(rt.inputs["model"], session.workdir / "base")
    tokenizer = load_tokenizer(model_dir)
    corpus = open_store(rt.inputs["corpus"])

    if env.is_main and not out.exists(INDEX_KEY):
        build_data(corpus, tokenizer, out, params)
    session.barrier()
    # Every rank of a sequence-parallel group reads the same sequences and trains on its shard.
    stream = TokenStream(
        out, session.workdir / "tokens", seed=params.seed, rank=sp.dp_rank, world_size=sp.dp_size, params=params.stream
    )
    if stream.seq_len != params.seq_len:
        raise SystemExit(f"token shards hold sequences of {stream.seq_len} tokens, but seqLen is {params.seq_len}")

    attn = activate_sequence_parallel(sp) if sp.size > 1 else attention_implementation(params.attention)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation=attn)
    model.config.use_cache = False
    old_theta = apply_rope_base(model, params.rope_theta, max_position_embeddings=params.max_positions)
    engine = session.build_engine(
        model, params, warmup=params.warmup_steps, total=params.max_steps, ddp_engine=SequenceParallelEngine, sp=sp
    )
    ensure_fp32_inv_freq(engine.model)  # DeepSpeed bf16 casts buffers; the report keeps them fp32
    meta = session.resume(engine)
    start = meta.get("step", 0)
    try:
        stream.resume(meta, samples_done=start * params.micro_batch_size * params.grad_accum_steps)
    except PositionMismatch as exc:
        raise SystemExit(str(exc)) from None
    config = model.config
    fpt = flops_per_token(
        n_params=matmul_params(model),
        n_layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        seq_len=params.seq_len,
    )
    metrics = session.open_metrics(flops_per_token=fpt, resumed_step=start)
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

    train_steps(
        session,
        engine,
        metrics,
        stream,
        params,
        start=start,
        tokens_per_step=params.micro_batch_size * params.seq_len * params.grad_accum_steps // sp.size,
        meta={"sequence_parallel": sp.size},
    )

    stream.close()
    # The export loads anywhere with standard attention; the ring is only this job's business.
    if sp.size > 1:
        engine.model.set_attn_implementation(attention_implementation("sdpa"))
    hf = session.export_hf(engine, tokenizer_dir=tokenizer_files(model_dir, session.workdir / "tokenizer"))
    session.upload_metrics()
    if env.is_main:
        result = run_needle(engine.model, tokenizer, corpus, out, params) if params.needle.enabled else None
        write_summary(out, params, env.world_size, sp, hf, old_theta, result)
    session.close()


def write_summary(
    out: ObjectStore,
    params: LongContextParams,
    world_size: int,
    sp: SequenceParallel,
    hf_uri: str | None,
    old_theta: float,
    needle_result: dict | None,
) -> dict:
    records = [json.loads(line) for line in out.get_bytes("metrics/rank-0.jsonl").decode().splitlines() if line.strip()]
    steps = [r for r in records if r.get("event", "step") == "step"]
    train_seconds = sum(r["step_seconds"] for r in steps)
    tokens = sum(r["tokens"] for r in steps) * world_size
    index = json.loads(out.get_bytes(INDEX_KEY))
    summary = {
        "steps": len(steps),
        "tokens": tokens,
        "seq_len": params.seq_len,
        "rope_theta_before": old_theta,
        "rope_theta": params.rope_theta,
        "max_position_embeddings": params.max_positions,
        "sequence_parallel": sp.size,
        "data_parallel": sp.dp_size,
        "corpus_sequences": index.get("corpus_sequences"),
        "synthetic_sequences": index.get("synthetic_sequences"),
        "loss_first": steps[0]["loss"] if steps else None,
        "loss_last": steps[-1]["loss"] if steps else None,
        "tokens_per_second": tokens / train_seconds if train_seconds else None,
        "mfu_mean": float(np.mean([r["mfu"] for r in steps if r.get("mfu") is not None] or [float("nan")])),
        "needle_average": needle_result["average"] if needle_result else None,
        "checkpoints": out.url("checkpoints"),
        "hf": hf_uri,
        "sft": out.url(SFT_KEY),
        "metrics": out.url("metrics"),
        "loss_curve": out.url("report/loss.png"),
        "needle": out.url("report/needle.png") if needle_result else None,
    }
    if steps:
        out.put_bytes("report/loss.png", loss_curve_png(steps, title=f"long context (seqLen {params.seq_len})"))
    out.put_bytes("summary.json", json.dumps(summary, indent=2).encode())
    return summary
