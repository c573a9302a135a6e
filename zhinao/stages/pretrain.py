"""Pretrain stage: pack the corpus into token shards, then train the 360Zhinao architecture.

inputs:  tokenizer  (a tokenizer-stage output, or a prefix holding tokenizer.json)
         corpus     (JSONL documents or a data-stage output)    -- packed into <output>/tokens/
         tokens     (optional: already packed shards; then corpus is not read)
output:  tokens/ checkpoints/ hf/ metrics/ report/loss.png summary.json
"""

import logging

import numpy as np

from zhinao.artifacts import StageOutput
from zhinao.config.pretrain import PretrainParams
from zhinao.config.runtime import StageRuntime
from zhinao.corpus import read_documents
from zhinao.data.packing import pack_source
from zhinao.data.token_shards import load_tokens, put_shard
from zhinao.metrics import flops_per_token
from zhinao.model import build_config, build_model, matmul_params
from zhinao.plots import loss_curve_png
from zhinao.storage import ObjectStore, open_store
from zhinao.tokenizer import EOD
from zhinao.tokenizer import load as load_tokenizer
from zhinao.training.causal_lm import causal_lm_step
from zhinao.training.loop import Schedule, TrainingLoop
from zhinao.training.session import TrainingSession

Params = PretrainParams
log = logging.getLogger(__name__)


def pack_corpus(corpus: ObjectStore, tokenizer, out: StageOutput, params: PretrainParams) -> dict:
    """Tokenize every document and write one .npy shard of (n, seqLen) sequences per source."""
    by_source: dict[str, list[list[int]]] = {}
    for doc in read_documents(corpus, text_field=params.text_field, source_field=params.source_field):
        by_source.setdefault(doc.source, []).append(tokenizer(doc.text, add_special_tokens=False)["input_ids"])
    eod = tokenizer.convert_tokens_to_ids(EOD)
    index = {"seq_len": params.seq_len, "vocab_size": len(tokenizer), "shards": []}
    for source in sorted(by_source):
        seqs = pack_source(by_source[source], seq_len=params.seq_len, eod_id=eod)
        if not len(seqs):
            log.warning("source %r has fewer than seqLen=%d tokens; nothing packed", source, params.seq_len)
            continue
        index["shards"].append(put_shard(out, f"{source}-00000", seqs, source=source))
    if not index["shards"]:
        raise SystemExit(f"corpus {corpus.uri} yields no sequence of {params.seq_len} tokens")
    out.write_tokens_index(index)
    return index


def run(rt: StageRuntime, params: PretrainParams) -> None:
    session = TrainingSession(rt, keep_checkpoints=params.keep_checkpoints)
    env = session.env
    if "tokenizer" not in rt.inputs:
        raise SystemExit("pretrain stage needs inputs.tokenizer")
    tok_dir = StageOutput.at(rt.inputs["tokenizer"]).fetch_tokenizer(session.workdir / "tokenizer")
    tokenizer = load_tokenizer(tok_dir)

    tokens = StageOutput.at(rt.inputs["tokens"]) if "tokens" in rt.inputs else session.output
    if env.is_main and not tokens.has_tokens():
        if "corpus" not in rt.inputs:
            raise SystemExit("pretrain stage needs inputs.corpus or inputs.tokens")
        pack_corpus(open_store(rt.inputs["corpus"]), tokenizer, session.output, params)
    session.barrier()
    data = load_tokens(tokens, session.workdir / "tokens")
    if data.shape[1] != params.seq_len:
        raise SystemExit(f"token shards hold sequences of {data.shape[1]} tokens, but seqLen is {params.seq_len}")

    config = build_config(
        params.model_size,
        vocab_size=len(tokenizer),
        max_position_embeddings=max(4096, params.seq_len),
        attention=params.attention,
    )
    model = build_model(config, seed=params.seed)
    engine = session.build_engine(model, params, warmup=params.warmup_steps, total=params.max_steps)
    fpt = flops_per_token(
        n_params=matmul_params(model),
        n_layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        seq_len=params.seq_len,
    )
    loop = TrainingLoop(session, engine, Schedule.of(params, params.max_steps), flops_per_token=fpt)
    start = loop.resume().get("step", 0)
    log.info(
        "training %s (%.1fM params) on %d sequences of %d tokens, steps %d..%d, world size %d",
        params.model_size,
        sum(p.numel() for p in model.parameters()) / 1e6,
        len(data),
        params.seq_len,
        start + 1,
        params.max_steps,
        env.world_size,
    )
    tokens_per_step = params.micro_batch_size * params.seq_len * params.grad_accum_steps
    loop.run(
        causal_lm_step(
            engine,
            data,
            params,
            rank=env.rank,
            world_size=env.world_size,
            device=session.device,
            tokens_per_step=tokens_per_step,
        ),
        checkpoint_meta=lambda step: {"tokens": step * tokens_per_step * env.world_size},
    )

    hf = session.export_hf(engine, tokenizer_dir=tok_dir)
    session.upload_metrics()
    if env.is_main:
        write_summary(session.output, params, env.world_size, hf)
    session.close()


def write_summary(out: StageOutput, params: PretrainParams, world_size: int, hf_uri: str | None) -> dict:
    steps = out.step_records()
    train_seconds = sum(r["step_seconds"] for r in steps)
    tokens = sum(r["tokens"] for r in steps) * world_size
    summary = {
        "steps": len(steps),
        "tokens": tokens,
        "loss_first": steps[0]["loss"],
        "loss_last": steps[-1]["loss"],
        "tokens_per_second": tokens / train_seconds if train_seconds else None,
        "mfu_mean": float(np.mean([r["mfu"] for r in steps if r.get("mfu") is not None] or [float("nan")])),
        "checkpoints": out.checkpoints_url,
        "hf": hf_uri,
        "metrics": out.metrics_url,
        "loss_curve": out.report_url("loss.png"),
    }
    out.put_report("loss.png", loss_curve_png(steps, title=f"pretrain ({params.model_size})"))
    out.write_summary(summary)
    return summary
