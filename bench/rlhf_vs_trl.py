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
    and each one's share of step time spent generating.

    python bench/rlhf_vs_trl.py [--steps 6] [--new-tokens 24] [--rounds 3]
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


def step_clock(sink: list):
    """Wraps TrainingMetrics.record_step to note the CPU clock at the end of every step."""
    from zhinao.metrics import TrainingMetrics

    real = TrainingMetrics.record_step

    def record(self, **kw):
        sink.append(time.process_time())
        return real(self, **kw)

    return TrainingMetrics, real, record


def run_ours(root: Path, hf: Path, steps: int, new_tokens: int, *, before: bool) -> dict:
    from zhinao.config.runtime import StageRuntime
    from zhinao.stages import rlhf

    name = "before" if before else "batched"
    os.environ["ZHINAO_WORKDIR"] = str(root / f"work-{name}")
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
    rt = StageRuntime(
        pipeline="bench",
        stage="rlhf",
        kind="rlhf",
        params=params.to_wire(),
        inputs={"policy": f"file://{hf.parent}", "prompts": f"file://{root / 'prompts'}"},
        output=f"file://{root / name}",
    )
    clock: list[float] = []
    cls, real, record = step_clock(clock)
    real_build = rlhf.build_rollout_engine
    if before:
        rlhf.build_rollout_engine = lambda params, *, tokenizer, **_: PerMicroBatchGenerate(
            stop_ids=stop_token_ids(tokenizer), pad_id=tokenizer.pad_token_id, micro_batch=params.micro_batch_size
        )
    cls.record_step = record
    try:
        clock.append(time.process_time())
        rlhf.run(rt, params)
    finally:
        cls.record_step, rlhf.build_rollout_engine = real, real_build
    lines = (root / name / "metrics" / "rank-0.jsonl").read_text().splitlines()
    recs = [r for r in map(json.loads, lines) if r.get("event") == "step"][1:]  # step 1 warms up
    cpu = [b - a for a, b in zip(clock[1:], clock[2:])]
    wall = sum(r["step_seconds"] for r in recs)
    return {
        "prompts_per_cpu_second": sum(r["samples"] for r in recs) / sum(cpu),
        "prompts_per_second": sum(r["samples"] for r in recs) / wall,
        "generation_share": sum(r["generation_seconds"] for r in recs) / wall,
        "reward_rule_first": recs[0]["reward_rule_mean"],
    }


def run_trl(root: Path, tok, hf: Path, records, steps: int, new_tokens: int) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32, attn_implementation="sdpa")
    model.generation_config.eos_token_id = stop_token_ids(tok)
    model.generation_config.pad_token_id = tok.pad_token_id
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
        output_dir=str(root / "trl"),
        per_device_train_batch_size=2 * MICRO,  # completions: MICRO prompts x 2
        gradient_accumulation_steps=ACCUM,
        num_generations=2,
        max_completion_length=new_tokens,
        temperature=1.0,
        top_k=0,
        beta=0.05,
        learning_rate=1e-5,
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
    trainer = RLOOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok)
    clock, wall, gen = [], [], [0.0]
    real_generate = trainer.model.generate

    def timed_generate(*a, **k):
        t = time.perf_counter()
        try:
            return real_generate(*a, **k)
        finally:
            gen[0] += time.perf_counter() - t

    trainer.model.generate = timed_generate

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            clock.append(time.process_time())
            wall.append(time.perf_counter())
            if len(wall) == 1:
                gen[0] = 0.0  # step 1 warms up, as for ours

    trainer.add_callback(Clock())
    trainer.train()
    prompts = MICRO * ACCUM * (len(clock) - 1)
    return {
        "prompts_per_cpu_second": prompts / (clock[-1] - clock[0]),
        "prompts_per_second": prompts / (wall[-1] - wall[0]),
        "generation_share": gen[0] / (wall[-1] - wall[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("ZHINAO_METRICS_PORT", "0")
    os.environ.setdefault("ZHINAO_PEAK_FLOPS", "1e11")  # skip the start-up matmul probe
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok, hf, records = prepare(root)
        generation = bench_generation(tok, hf, records, a.new_tokens, a.rounds)
        print(json.dumps(generation, indent=2), flush=True)
        remax = {
            "ours batched engine": run_ours(root, hf, a.steps, a.new_tokens, before=False),
            "ours before (per-micro-batch generate)": run_ours(root, hf, a.steps, a.new_tokens, before=True),
            "TRL RLOOTrainer (2 completions/prompt)": run_trl(root, tok, hf, records, a.steps, a.new_tokens),
        }
    peer = remax["TRL RLOOTrainer (2 completions/prompt)"]
    for r in remax.values():
        r["ratio_vs_trl_cpu"] = r["prompts_per_cpu_second"] / peer["prompts_per_cpu_second"]
    result = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "load_average": os.getloadavg()[0],
        "trl": __import__("trl").__version__,
        "transformers": __import__("transformers").__version__,
        "settings": {"steps": a.steps, "max_new_tokens": a.new_tokens, "prompts_per_step": MICRO * ACCUM},
        "generation": generation,
        "remax_step": remax,
    }
    print(json.dumps(result, indent=2))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
