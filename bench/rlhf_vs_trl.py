"""RLHF on CPU against TRL, in one run: rollout generation alone, and whole ReMax steps against
TRL's RLOO trainer.

Same tiny 360Zhinao model (random weights, a BPE vocabulary trained on the synthetic arithmetic
prompts), same prompts (the demo's arithmetic questions), same rule reward (arithmetic), same
sampling (temperature 1, no top-k, the three stop tokens), one torch thread everywhere, so CPU
seconds compare like for like on a shared machine.

(a) generation: response tokens per CPU second of the batched engine (zhinao/rollout/hf_batched.py;
    one call for all prompts of a step, sampled and greedy rows together) against what the RLHF
    stage did before it: Hugging Face `generate` per micro-batch, once sampled and once greedy.
(b) ReMax: prompts per second of whole steps (rollout + scoring + update) of our RLHF stage, with
    the batched engine and with the old per-micro-batch generation, against TRL's `RLOOTrainer`
    with 2 completions per prompt (ReMax also generates 2 per prompt: one sampled, one greedy);
    and each one's share of step time spent generating; and ReMax's scoring alone (policy and
    reference log-probs, reward) with both rows of a micro-batch in one pass against one per kind.

(c) DPO: tokens per CPU second of our RLHF stage (algorithm dpo) against TRL's `DPOTrainer`.
(d) SFT: tokens per CPU second of our SFT stage against TRL's `SFTTrainer` (both packing rows full).

    python bench/rlhf_vs_trl.py [--steps 6] [--new-tokens 24] [--rounds 3] [--parts generation,remax,dpo,sft]
"""

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from zhinao import rule_rewards
from zhinao.chat import ChatEncoder, as_messages, render
from zhinao.config.rlhf import RLHFParams
from zhinao.model import build_config, build_model
from zhinao.rollout.engine import Generation, Sampling, cut_at_stop, stop_token_ids
from zhinao.rollout.hf_batched import HFBatchedEngine
from zhinao.synthetic import all_pairs, question, rl_prompts
from zhinao.tokenizer import to_transformers, train_bpe

RESULTS = Path(__file__).parent / "results" / "rlhf_vs_trl.json"
RULES = {"arithmetic": 1.0}
MICRO, ACCUM = 8, 4  # 32 prompts per optimizer step


def machine() -> str:
    model = next(
        (
            l.split(":", 1)[1].strip()
            for l in Path("/proc/cpuinfo").read_text().splitlines()
            if l.startswith("model name")
        ),
        platform.processor() or "cpu",
    )
    return f"{platform.machine()}, {os.cpu_count()} cores ({model}), no GPU, torch {torch.__version__}"


def prepare(root: Path):
    texts = [f"{question(a, b)}{a + b}" for a, b in all_pairs()] + ["You are a helpful assistant."]
    tok = to_transformers(train_bpe(texts * 2, vocab_size=400, min_frequency=1))
    hf = root / "policy" / "hf"
    tok.save_pretrained(hf)
    config = build_config("tiny", vocab_size=len(tok), max_position_embeddings=512, attention="sdpa")
    config.pad_token_id = tok.pad_token_id
    build_model(config, seed=0).save_pretrained(hf, safe_serialization=True)
    records = rl_prompts(all_pairs())
    (root / "prompts").mkdir()
    (root / "prompts" / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tok, hf, records


class PerMicroBatchGenerate:
    """The RLHF stage's rollouts before the batched engine: per micro-batch, one `generate` call for
    the sampled responses and another for the greedy ones (kept here only to measure against)."""

    def __init__(self, *, stop_ids: list[int], pad_id: int, micro_batch: int):
        self.stop_ids, self.pad_id, self.micro_batch, self.model = stop_ids, pad_id, micro_batch, None

    def sync(self, model):
        self.model = model

    @torch.no_grad()
    def _generate(self, prompts, greedy: bool, sampling: Sampling) -> list[list[int]]:
        length = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), length), self.pad_id)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, length - len(p) :], mask[i, length - len(p) :] = torch.tensor(p), 1
        was = self.model.training
        self.model.eval()
        extra = {} if greedy else {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": 1.0}
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=not greedy,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            use_cache=True,
            **extra,
        )
        self.model.train(was)
        return [cut_at_stop(r, self.stop_ids) for r in out[:, length:].tolist()]

    def generate(self, prompts, *, sampled: int, greedy: bool, sampling: Sampling) -> Generation:
        assert sampled == 1
        drawn, best = [], []
        for start in range(0, len(prompts), self.micro_batch):
            chunk = prompts[start : start + self.micro_batch]
            drawn += self._generate(chunk, False, sampling)
            best += self._generate(chunk, True, sampling) if greedy else []
        return Generation(sampled=drawn, greedy=best, tokens=sum(len(r) for r in drawn + best))


# ------------------------------------------------------------------------------ (a) generation


def bench_generation(tok, hf: Path, records, new_tokens: int, rounds: int) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32, attn_implementation="sdpa").train()
    enc, stops = ChatEncoder(tok), stop_token_ids(tok)
    prompts = [enc.prompt(as_messages(r["prompt"])) for r in records[: MICRO * ACCUM]]
    engines = {
        "per-micro-batch generate (before)": PerMicroBatchGenerate(
            stop_ids=stops, pad_id=tok.pad_token_id, micro_batch=MICRO
        ),
        "batched engine fp32": HFBatchedEngine(
            stop_ids=stops, pad_id=tok.pad_token_id, device=torch.device("cpu"), dtype=None
        ),
        "batched engine bf16": HFBatchedEngine(
            stop_ids=stops, pad_id=tok.pad_token_id, device=torch.device("cpu"), dtype=torch.bfloat16
        ),
    }
    rates: dict[str, list[float]] = {k: [] for k in engines}
    sampling = Sampling(max_new_tokens=new_tokens)
    for _ in range(rounds):  # interleaved, so background load hits each alike
        for name, e in engines.items():
            e.sync(model)
            torch.manual_seed(0)
            cpu = time.process_time()
            gen = e.generate(prompts, sampled=1, greedy=True, sampling=sampling)
            rates[name].append(gen.tokens / (time.process_time() - cpu))
    best = {k: max(v) for k, v in rates.items()}
    base = best["per-micro-batch generate (before)"]
    return {
        "prompts": len(prompts),
        "responses_per_prompt": 2,
        "max_new_tokens": new_tokens,
        "tokens_per_cpu_second": best,
        "speedup_vs_before": {k: v / base for k, v in best.items()},
    }


# ------------------------------------------------------------------------------ (b) ReMax step


def run_stage_timed(root: Path, name: str, kind: str, params, inputs: dict) -> tuple[list[dict], list[float]]:
    """Runs one of our stages in this process; its step records and the CPU seconds of each step
    (both without step 1, which warms up). The CPU clock is read as each step's metrics are recorded."""
    from zhinao.config.runtime import StageRuntime
    from zhinao.metrics import TrainingMetrics
    from zhinao.stages import rlhf, sft

    os.environ["ZHINAO_WORKDIR"] = str(root / f"work-{name}")
    rt = StageRuntime(
        pipeline="bench", stage=kind, kind=kind, params=params.to_wire(), inputs=inputs, output=f"file://{root / name}"
    )
    clock, real = [], TrainingMetrics.record_step

    def record(self, **kw):
        clock.append(time.process_time())
        return real(self, **kw)

    TrainingMetrics.record_step = record
    try:
        {"rlhf": rlhf, "sft": sft}[kind].run(rt, params)
    finally:
        TrainingMetrics.record_step = real
    lines = (root / name / "metrics" / "rank-0.jsonl").read_text().splitlines()
    recs = [r for r in map(json.loads, lines) if r.get("event") == "step"][1:]
    return recs, [b - a for a, b in zip(clock, clock[1:])]


def run_ours(root: Path, hf: Path, steps: int, new_tokens: int, *, before: bool) -> dict:
    from zhinao.stages import rlhf

    params = RLHFParams(
        algorithm="remax",
        rm_weight=0,
        rules=RULES,
        max_steps=steps,
        micro_batch_size=MICRO,
        grad_accum_steps=ACCUM,
        max_new_tokens=new_tokens,
        eval_prompts=0,
        checkpoint_every=10_000,
        lr=1e-5,
        kl_coef=0.05,
        attention="sdpa",
    )
    inputs = {"policy": f"file://{hf.parent}", "prompts": f"file://{root / 'prompts'}"}
    real_build = rlhf.build_rollout_engine
    if before:
        rlhf.build_rollout_engine = lambda params, *, tokenizer, **_: PerMicroBatchGenerate(
            stop_ids=stop_token_ids(tokenizer), pad_id=tokenizer.pad_token_id, micro_batch=params.micro_batch_size
        )
    try:
        recs, cpu = run_stage_timed(root, "remax-before" if before else "remax", "rlhf", params, inputs)
    finally:
        rlhf.build_rollout_engine = real_build
    wall = sum(r["step_seconds"] for r in recs)
    return {
        "prompts_per_cpu_second": sum(r["samples"] for r in recs) / sum(cpu),
        "prompts_per_second": sum(r["samples"] for r in recs) / wall,
        "generation_share": sum(r["generation_seconds"] for r in recs) / wall,
    }


class StepClock:
    """A TrainerCallback's hook: CPU and wall clocks at the end of every step (TRL's trainers)."""

    def __init__(self):
        self.cpu, self.wall = [], []

    def on_step_end(self, *a, **k):
        self.cpu.append(time.process_time())
        self.wall.append(time.perf_counter())

    def per_cpu_second(self, per_step: float) -> float:
        return per_step * (len(self.cpu) - 1) / (self.cpu[-1] - self.cpu[0])  # step 1 warms up, as for ours


def trl_callback(clock: StepClock):
    from transformers import TrainerCallback

    return type("Clock", (TrainerCallback,), {"on_step_end": lambda self, *a, **k: clock.on_step_end()})()


def trl_common(root: Path, name: str, steps: int) -> dict:
    return dict(
        output_dir=str(root / name),
        max_steps=steps,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        seed=0,
        dataloader_num_workers=0,
    )


def run_trl(root: Path, tok, hf: Path, records, steps: int, new_tokens: int) -> dict:
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    model = load_policy(tok, hf)
    data = Dataset.from_list(
        [
            {
                "prompt": render(as_messages(r["prompt"]), add_generation_prompt=True),
                "answer": r["answer"],
                "task": r["task"],
            }
            for r in records
        ]
    )

    def reward(prompts, completions, answer, task, **_):
        return [rule_rewards.score({"answer": a, "task": t}, c, RULES) for c, a, t in zip(completions, answer, task)]

    args = RLOOConfig(
        per_device_train_batch_size=2 * MICRO,  # completions: MICRO prompts x 2
        gradient_accumulation_steps=ACCUM,
        num_generations=2,
        max_completion_length=new_tokens,
        temperature=1.0,
        top_k=0,
        beta=0.05,
        learning_rate=1e-5,
        generation_kwargs={"eos_token_id": stop_token_ids(tok)},
        **trl_common(root, "trl-rloo", steps),
    )
    trainer = RLOOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok)
    trainer.eos_token_ids = stop_token_ids(tok)  # its completion masks end at the same three stop tokens
    clock, gen = StepClock(), [0.0]
    real_generate = trainer.model.generate

    def timed_generate(*a, **k):
        t = time.perf_counter()
        try:
            return real_generate(*a, **k)
        finally:
            if clock.wall:  # step 1 warms up, as for ours
                gen[0] += time.perf_counter() - t

    trainer.model.generate = timed_generate
    trainer.add_callback(trl_callback(clock))
    trainer.train()
    prompts = MICRO * ACCUM
    return {
        "prompts_per_cpu_second": clock.per_cpu_second(prompts),
        "prompts_per_second": prompts * (len(clock.wall) - 1) / (clock.wall[-1] - clock.wall[0]),
        "generation_share": gen[0] / (clock.wall[-1] - clock.wall[0]),
    }


def score_separately(policy, ref, prompts, generated, scorer, params, tokenizer, device) -> list:
    """ReMax's scoring before it was batched (kept here only to measure against): the sampled rows,
    then the greedy rows, each through its own policy, reference and scorer pass."""
    from zhinao.alignment.rollout import logprobs_of, sequence_batch, texts
    from zhinao.losses import kl_shaped_return

    returns = []
    for responses in generated:
        batch = sequence_batch(prompts, responses, tokenizer.pad_token_id, device)
        logp, mask = logprobs_of(policy, batch)
        ref_logp, _ = logprobs_of(ref, batch)
        score = scorer(prompts, texts(tokenizer, responses))["score"]
        returns.append(kl_shaped_return(score, logp, ref_logp, mask, params.kl_coef, params.kl_estimator))
    return returns


def bench_scoring(tok, hf: Path, records, new_tokens: int, rounds: int) -> dict:
    """ReMax's scoring of one step's rollouts (policy and reference log-probs, the rule reward) per
    micro-batch: both rows in one pass (zhinao/alignment/remax.py) against one pass per kind of row."""
    from transformers import AutoModelForCausalLM

    from zhinao.alignment import remax
    from zhinao.alignment.scoring import Scorer

    cpu = torch.device("cpu")
    policy, ref = (
        AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32, attn_implementation="sdpa") for _ in range(2)
    )
    params = RLHFParams(rm_weight=0, rules=RULES, kl_coef=0.05)
    enc = ChatEncoder(tok)
    scorer = Scorer(params, enc, None, cpu)
    prompts = [{**r, "_ids": enc.prompt(as_messages(r["prompt"]))} for r in records[: MICRO * ACCUM]]
    engine = HFBatchedEngine(stop_ids=stop_token_ids(tok), pad_id=tok.pad_token_id, device=cpu, dtype=None)
    engine.sync(policy)
    torch.manual_seed(0)
    gen = engine.generate([p["_ids"] for p in prompts], sampled=1, greedy=True, sampling=Sampling(new_tokens))
    ways = {"one pass per kind of row (before)": score_separately, "both rows in one pass": remax.rollout}
    rates: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(rounds):
        for name, score in ways.items():
            cpu_began = time.process_time()
            for at in range(0, len(prompts), MICRO):
                rows = slice(at, at + MICRO)
                score(policy, ref, prompts[rows], (gen.sampled[rows], gen.greedy[rows]), scorer, params, tok, cpu)
            rates[name].append(len(prompts) / (time.process_time() - cpu_began))
    best = {k: max(v) for k, v in rates.items()}
    return {
        "prompts_per_cpu_second": best,
        "speedup": best["both rows in one pass"] / best["one pass per kind of row (before)"],
    }


# ------------------------------------------------------------------------------ (c) DPO, (d) SFT


def load_policy(tok, hf: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32, attn_implementation="sdpa")
    model.generation_config.eos_token_id = stop_token_ids(tok)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def bench_dpo(root: Path, tok, hf: Path, steps: int) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from zhinao.alignment.data import encode_pairs
    from zhinao.synthetic import preference_pairs

    records = preference_pairs(all_pairs(), per_pair=2)
    (root / "prefs").mkdir()
    (root / "prefs" / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    params = RLHFParams(
        algorithm="dpo", beta=0.1, max_len=64, max_steps=steps, micro_batch_size=MICRO, lr=1e-5,
        checkpoint_every=10_000, eval_prompts=0, attention="sdpa",
    )  # fmt: skip
    inputs = {"policy": f"file://{hf.parent}", "preferences": f"file://{root / 'prefs'}"}
    recs, cpu = run_stage_timed(root, "dpo", "rlhf", params, inputs)
    ours = sum(r["tokens"] for r in recs) / sum(cpu)
    # Tokens of a pair as we encode it (prompt + chosen and prompt + rejected); TRL trains the same pairs.
    pairs, _ = encode_pairs(records, tok, params)
    per_pair = sum(len(p["chosen"]) + len(p["rejected"]) for p in pairs) / len(pairs)
    im_end = "<|im_end|>\n"
    data = Dataset.from_list(
        [
            {
                "prompt": render(as_messages(r["prompt"]), add_generation_prompt=True),
                "chosen": r["chosen"] + im_end,
                "rejected": r["rejected"] + im_end,
            }
            for r in records
        ]
    )
    args = DPOConfig(beta=0.1, max_length=64, per_device_train_batch_size=MICRO, learning_rate=1e-5,
                     **trl_common(root, "trl-dpo", steps))  # fmt: skip
    trainer = DPOTrainer(model=load_policy(tok, hf), args=args, train_dataset=data, processing_class=tok)
    clock = StepClock()
    trainer.add_callback(trl_callback(clock))
    trainer.train()
    peer = clock.per_cpu_second(MICRO * per_pair)
    return {
        "pairs_per_step": MICRO,
        "tokens_per_pair": per_pair,
        "tokens_per_cpu_second": {"ours": ours, "TRL DPOTrainer": peer},
        "ratio": ours / peer,
    }


def bench_sft(root: Path, tok, hf: Path, steps: int) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from zhinao.config.sft import SFTParams
    from zhinao.synthetic import sft_conversations

    records = sft_conversations(2000)
    (root / "sft-data").mkdir()
    (root / "sft-data" / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    max_len = 256
    params = SFTParams(max_len=max_len, max_steps=steps, micro_batch_size=MICRO, lr=1e-5, checkpoint_every=10_000,
                       dedup=False, attention="sdpa")  # fmt: skip
    inputs = {"model": f"file://{hf.parent}", "data": f"file://{root / 'sft-data'}"}
    recs, cpu = run_stage_timed(root, "sft", "sft", params, inputs)
    ours = sum(r["tokens"] for r in recs) / sum(cpu)
    # The same conversations as text, packed into full rows of max_len tokens ("wrapped"), as ours packs.
    data = Dataset.from_list([{"text": render(r["messages"])} for r in records])
    args = SFTConfig(max_length=max_len, packing=True, packing_strategy="wrapped", per_device_train_batch_size=MICRO,
                     learning_rate=1e-5, **trl_common(root, "trl-sft", steps))  # fmt: skip
    trainer = SFTTrainer(model=load_policy(tok, hf), args=args, train_dataset=data, processing_class=tok)
    clock = StepClock()
    trainer.add_callback(trl_callback(clock))
    trainer.train()
    peer = clock.per_cpu_second(MICRO * max_len)
    return {
        "rows_per_step": MICRO,
        "row_tokens": max_len,
        "tokens_per_cpu_second": {"ours": ours, "TRL SFTTrainer": peer},
        "ratio": ours / peer,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", default="generation,remax,dpo,sft", help="comma-separated subset to run")
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("ZHINAO_METRICS_PORT", "0")
    os.environ.setdefault("ZHINAO_PEAK_FLOPS", "1e11")  # skip the start-up matmul probe
    result = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "trl": __import__("trl").__version__,
        "transformers": __import__("transformers").__version__,
        "settings": {"steps": a.steps, "max_new_tokens": a.new_tokens, "prompts_per_step": MICRO * ACCUM},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok, hf, records = prepare(root)
        if "generation" in a.parts:
            result["generation"] = bench_generation(tok, hf, records, a.new_tokens, a.rounds)
            print(json.dumps(result["generation"], indent=2), flush=True)
        if "remax" in a.parts:
            remax = {
                "ours batched engine": run_ours(root, hf, a.steps, a.new_tokens, before=False),
                "ours before (per-micro-batch generate)": run_ours(root, hf, a.steps, a.new_tokens, before=True),
                "TRL RLOOTrainer (2 completions/prompt)": run_trl(root, tok, hf, records, a.steps, a.new_tokens),
            }
            peer = remax["TRL RLOOTrainer (2 completions/prompt)"]
            for r in remax.values():
                r["ratio_vs_trl_cpu"] = r["prompts_per_cpu_second"] / peer["prompts_per_cpu_second"]
            result["remax_step"] = remax
            print(json.dumps(remax, indent=2), flush=True)
            result["remax_scoring"] = bench_scoring(tok, hf, records, a.new_tokens, a.rounds)
            print(json.dumps(result["remax_scoring"], indent=2), flush=True)
        if "dpo" in a.parts:
            result["dpo"] = bench_dpo(root, tok, hf, a.steps)
            print(json.dumps(result["dpo"], indent=2), flush=True)
        if "sft" in a.parts:
            result["sft"] = bench_sft(root, tok, hf, a.steps)
    result["load_average_at_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
