"""A rule-checkable task for the alignment demo and tests: single-digit addition.

The user asks `a+b=`; the right answer is checked by `zhinao.rule_rewards.arithmetic`. The SFT
demonstrations are deliberately noisy (a share of them answer wrongly, as real SFT data is
imperfect): some decline ("I don't know."), some give a wrong sum. After SFT the policy samples
those too, and RLHF has something to fix that only a reward reveals. Declining is a behaviour shared
by all prompts, so what RL learns on its prompts carries over to held-out ones; a tiny model's
wrong sums are per-fact memories that do not carry over (measured: see docs/alignment.md).
"""

import json
import random

from zhinao.storage import open_store

OPERANDS = range(10)


def question(a: int, b: int) -> str:
    return f"{a}+{b}="


def wrong_answer(rng: random.Random, right: int) -> int:
    while True:
        wrong = right + rng.choice([-3, -2, -1, 1, 2, 3])
        if wrong >= 0:
            return wrong


def all_pairs() -> list[tuple[int, int]]:
    return [(a, b) for a in OPERANDS for b in OPERANDS]


def split_pairs(seed: int = 0, held_out: int = 20) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(train, held-out) operand pairs; held-out pairs appear in no RL prompt and no preference pair."""
    pairs = all_pairs()
    random.Random(seed).shuffle(pairs)
    return pairs[held_out:], pairs[:held_out]


REFUSAL = "I don't know."


def sft_conversations(n: int, *, refuse: float = 0.3, noise: float = 0.1, seed: int = 0) -> list[dict]:
    """`n` conversations over all operand pairs: a `refuse` share declines, a `noise` share is wrong."""
    rng = random.Random(seed)
    out = []
    for _i in range(n):
        a, b = rng.choice(OPERANDS), rng.choice(OPERANDS)
        u = rng.random()
        answer = REFUSAL if u < refuse else wrong_answer(rng, a + b) if u < refuse + noise else a + b
        out.append(
            {
                "messages": [
                    {"role": "user", "content": question(a, b)},
                    {"role": "assistant", "content": str(answer)},
                ],
                "source": "synthetic-arithmetic",
                "category": "math",
                "difficulty": "easy",
            }
        )
    return out


def preference_pairs(pairs: list[tuple[int, int]], *, per_pair: int = 6, seed: int = 0) -> list[dict]:
    """Right sum (chosen) against a refusal or a wrong sum (rejected, half each)."""
    rng = random.Random(seed + 1)
    out = []
    for a, b in pairs:
        for i in range(per_pair):
            rejected = REFUSAL if i % 2 else str(wrong_answer(rng, a + b))
            out.append({"prompt": question(a, b), "chosen": str(a + b), "rejected": rejected, "task": "arithmetic"})
    rng.shuffle(out)
    return out


def rl_prompts(pairs: list[tuple[int, int]]) -> list[dict]:
    return [{"prompt": question(a, b), "answer": a + b, "task": "arithmetic"} for a, b in pairs]


def write_jsonl(uri: str, key: str, records: list[dict]) -> None:
    open_store(uri).put_bytes(key, "".join(json.dumps(r) + "\n" for r in records).encode())


def write_demo_alignment_data(
    store_uri: str, *, seed: int = 0, sft_examples: int = 2000, refuse: float = 0.3, noise: float = 0.1
) -> dict[str, str]:
    """Write SFT, preference, RL-prompt and held-out-prompt JSONL under `store_uri`/alignment/.

    Returns the input URIs by name: sft, preferences, prompts, evalPrompts.
    """
    root = store_uri.rstrip("/") + "/alignment"
    train, held_out = split_pairs(seed)
    write_jsonl(
        root + "/sft", "part-00000.jsonl", sft_conversations(sft_examples, refuse=refuse, noise=noise, seed=seed)
    )
    write_jsonl(root + "/preferences", "part-00000.jsonl", preference_pairs(train, seed=seed))
    write_jsonl(root + "/prompts", "part-00000.jsonl", rl_prompts(train))
    write_jsonl(root + "/eval-prompts", "part-00000.jsonl", rl_prompts(held_out))
    return {
        name: f"{root}/{key}"
        for name, key in (
            ("sft", "sft"),
            ("preferences", "preferences"),
            ("prompts", "prompts"),
            ("evalPrompts", "eval-prompts"),
        )
    }
