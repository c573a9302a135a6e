"""Pretrain stage: tokenize the corpus into token shards on every rank, then train the 360Zhinao
architecture, each rank streaming its share of the shards (docs/data.md).

inputs:  tokenizer  (a tokenizer-stage output, or a prefix holding tokenizer.json)
         corpus     (JSONL documents or a data-stage output)    -- tokenized into <output>/tokens/
         tokens     (optional: a stage output with tokens/index.json; then corpus is not read)
         valid      (optional: a prefix holding tokens.npy, (n, seqLen) held-out sequences whose
                    loss is recorded as `valid_loss` every `evalEvery` steps)
output:  tokens/ checkpoints/ hf/ metrics/ report/loss.png summary.json
"""

import logging
import math
from collections.abc import Callable

import numpy as np
import torch

from zhinao.artifacts import StageOutput
from zhinao.config.pretrain import PretrainParams
from zhinao.config.runtime import StageRuntime
from zhinao.data.token_stream import TokenStream, open_token_stream, resume_stream
from zhinao.data.tokenize_shards import merge_parts, tokenize_share
from zhinao.model import build_config, build_model, num_params
from zhinao.plots import loss_curve_png
from zhinao.storage import open_store
from zhinao.tokenizer import load as load_tokenizer
from zhinao.training.causal_lm import causal_lm_step
from zhinao.training.engine import Engine
from zhinao.training.loop import Schedule, TrainingLoop, tokens_trained
from zhinao.training.session import TrainingSession

Params = PretrainParams
log = logging.getLogger(__name__)


def open_stream(session: TrainingSession, rt: StageRuntime, tokenizer, params: PretrainParams) -> TokenStream:
    """Tokenize the corpus on every rank unless token shards exist, then open this rank's stream."""
    env, out = session.env, session.output
    tokens = StageOutput.at(rt.inputs["tokens"]) if "tokens" in rt.inputs else out
    if "tokens" in rt.inputs and not tokens.has_tokens():
        raise SystemExit(f"inputs.tokens: {tokens.uri} holds no token index (tokens/index.json)")
    if not tokens.has_tokens():
        if "corpus" not in rt.inputs:
            raise SystemExit("pretrain stage needs inputs.corpus or inputs.tokens")
        corpus = open_store(rt.inputs["corpus"])
        tokenize_share(
            corpus,
            tokenizer,
            out,
            seq_len=params.seq_len,
            params=params.stream,
            rank=env.rank,
            world_size=env.world_size,
            text_field=params.text_field,
            source_field=params.source_field,
        )
        session.barrier()
        if env.is_main:
            merge_parts(out, world_size=env.world_size, where=corpus.uri)
    session.barrier()
    return open_token_stream(
        tokens,
        session.workdir / "tokens",
        seq_len=params.seq_len,
        seed=params.seed,
        rank=env.rank,
        world_size=env.world_size,
        params=params.stream,
    )


VALID_TOKENS = "tokens.npy"
"""The held-out sequences under `inputs.valid` (zhinao.ablation.prepare writes them)."""


def load_valid(session: TrainingSession, uri: str, seq_len: int) -> np.ndarray:
    """The (n, seqLen) validation sequences under `uri`; a missing file or another length ends the stage."""
    local = session.workdir / "valid" / VALID_TOKENS
    local.parent.mkdir(parents=True, exist_ok=True)
    store = open_store(uri)
    if not store.exists(VALID_TOKENS):
        raise SystemExit(f"inputs.valid: {uri} holds no {VALID_TOKENS}")
    store.get_file(VALID_TOKENS, local)
    tokens = np.load(local)
    if tokens.ndim != 2 or tokens.shape[1] != seq_len or len(tokens) == 0:
        raise SystemExit(f"inputs.valid: {uri}/{VALID_TOKENS} holds shape {tokens.shape}, not (n, {seq_len})")
    return tokens


def valid_loss_fn(
    engine: Engine, tokens: np.ndarray, *, rank: int, world_size: int, batch: int, device: torch.device
) -> Callable[[int], dict[str, float]]:
    """The loop's eval hook: each rank scores every world_size-th sequence, in batches of at most
    `batch` rows (the micro-batch, which fits), as many batches on every rank; the mean over all."""
    if len(tokens) < world_size:
        raise SystemExit(f"inputs.valid: {len(tokens)} validation sequences for {world_size} ranks; each needs one")
    mine = torch.from_numpy(tokens[rank::world_size].astype(np.int64)).to(device)
    n_batches = math.ceil(math.ceil(len(tokens) / world_size) / batch)
    batches = [mine[i * batch : (i + 1) * batch] for i in range(n_batches)]
    return lambda step: {"valid_loss": engine.eval_loss(batches)}


def run(rt: StageRuntime, params: PretrainParams) -> None:
    session = TrainingSession(rt, keep_checkpoints=params.keep_checkpoints)
    env = session.env
    if "tokenizer" not in rt.inputs:
        raise SystemExit("pretrain stage needs inputs.tokenizer")
    tok_dir = StageOutput.at(rt.inputs["tokenizer"]).fetch_tokenizer(session.workdir / "tokenizer")
    tokenizer = load_tokenizer(tok_dir)

    stream = open_stream(session, rt, tokenizer, params)

    config = build_config(
        params.model_size,
        vocab_size=len(tokenizer),
        max_position_embeddings=max(4096, params.seq_len),
        attention=params.attention,
    )
    with session.model_construction(params):
        model = build_model(config, seed=params.seed)
    engine = session.build_engine(model, params, warmup=params.warmup_steps, total=params.max_steps)
    loop = TrainingLoop.for_model(session, engine, model, Schedule.of(params, params.max_steps), seq_len=params.seq_len)
    meta = loop.resume()
    start = meta.get("step", 0)
    resume_stream(stream, meta, samples_done=start * params.micro_batch_size * params.grad_accum_steps)
    log.info(
        "training %s (%.1fM params) on %d sequences of %d tokens per rank and epoch, steps %d..%d, world size %d",
        params.model_size,
        num_params(model) / 1e6,
        len(stream),
        params.seq_len,
        start + 1,
        params.max_steps,
        env.world_size,
    )
    tokens_per_step = params.micro_batch_size * params.seq_len * params.grad_accum_steps
    eval_fn = None
    if "valid" in rt.inputs:
        valid = load_valid(session, rt.inputs["valid"], params.seq_len)
        eval_fn = valid_loss_fn(
            engine,
            valid,
            rank=env.rank,
            world_size=env.world_size,
            batch=params.micro_batch_size,
            device=session.device,
        )
    loop.run(
        causal_lm_step(engine, stream, params, device=session.device, tokens_per_step=tokens_per_step),
        eval_fn=eval_fn,
        checkpoint_meta=lambda step: {
            "tokens": meta.get("tokens", 0) + (step - start) * tokens_per_step * env.world_size,
            "data": stream.state_dict(),
        },
    )
    stream.close()

    hf = session.export_hf(engine, params, tokenizer_dir=tok_dir)
    session.upload_metrics()
    if env.is_main:
        write_summary(session.output, params, env.world_size, hf)
    session.close()


def write_summary(out: StageOutput, params: PretrainParams, world_size: int, hf_uri: str | None) -> dict:
    steps = out.step_records()
    train_seconds = sum(r["step_seconds"] for r in steps)
    tokens = tokens_trained(steps, world_size)
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
