"""Evaluations of one pretraining run: its validation and training loss curves, and the benchmark harness.

Validation loss "every N steps" is computed by the pretrain stage in its training loop (evalEvery
= N on the ablation's held-out sequences, `inputs.valid`) and read here from the run's metrics log,
so no run keeps a checkpoint for its evaluation: only the latest, to resume.

Benchmark task files are JSONL, one item per line (docs/ablation.md has the full description):

    {"task": "capitals", "type": "mc",  "question": "The capital of France is", "choices": ["Paris", "Rome"], "answer": 0}
    {"task": "sums",     "type": "gen", "question": "2 + 2 =", "answers": ["4"]}

Multiple-choice items are scored under every template and by three rules: `letter` (the option
letter with the highest likelihood after the lettered prompt), `content` (the option text with the
highest summed log-likelihood), `content_norm` (the same per token) and `generated` (greedy
generation after the lettered prompt names the right letter or contains the right option text and
no other option's: the report's generative scoring, after Zheng et al. 2023). Generative items are
scored `exact` (the first generated line equals an answer, case and punctuation aside) and
`contains` (an answer occurs in the generation). A task's score is the mean over its templates.
"""

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from zhinao.artifacts import StageOutput
from zhinao.corpus import jsonl_lines
from zhinao.storage import ObjectStore, open_store

LETTERS = "ABCDEFGHIJ"
MC_TEMPLATES: dict[str, str] = {
    "qa": "Question: {question}\n{options}\nAnswer:",
    "choose": "{question}\nOptions:\n{options}\nThe right option is",
    "cloze": "{question}",  # no options shown: content scoring only
}
GEN_TEMPLATES: dict[str, str] = {
    "qa": "Question: {question}\nAnswer:",
    "cloze": "{question}",
}


@dataclass
class Item:
    task: str
    type: str
    question: str
    choices: list[str] = field(default_factory=list)
    answer: int = 0
    answers: list[str] = field(default_factory=list)


def _text(value, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    return value


def _texts(value, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of strings")
    return list(value)


def parse_item(obj, where: str = "") -> Item:
    """One task item from its JSON object; a ValueError names `where` and the reason."""
    try:
        if not isinstance(obj, dict):
            raise ValueError(f"an item is a JSON object, not {type(obj).__name__}")
        kind = obj.get("type")
        for key in ("task", "question") + (
            ("choices", "answer") if kind == "mc" else ("answers",) if kind == "gen" else ()
        ):
            if key not in obj:
                raise ValueError(f"missing field {key!r}")
        if kind == "mc":
            answer = obj["answer"]
            if isinstance(answer, bool) or not isinstance(answer, int):
                raise ValueError("answer must be the 0-based index (an integer) of the right choice")
            item = Item(
                _text(obj["task"], "task"),
                "mc",
                _text(obj["question"], "question"),
                _texts(obj["choices"], "choices"),
                answer,
            )
            if not 2 <= len(item.choices) <= len(LETTERS) or not 0 <= item.answer < len(item.choices):
                raise ValueError(f"needs 2-{len(LETTERS)} choices and 0 <= answer < len(choices)")
            return item
        if kind == "gen":
            answers = _texts(obj["answers"], "answers")
            if not answers or not any(a.strip() for a in answers):
                raise ValueError("answers is empty")
            return Item(_text(obj["task"], "task"), "gen", _text(obj["question"], "question"), answers=answers)
        raise ValueError(f"type must be 'mc' or 'gen', not {kind!r}")
    except ValueError as exc:
        raise ValueError(f"{where}bad task item: {exc}") from None


def load_tasks(uri: str) -> list[Item]:
    """Items of every *.jsonl under a URI prefix, or of the one file a file:// URI names. A bad line
    raises a ValueError naming its file and line number."""
    if uri.startswith("file://") and Path(uri[len("file://") :]).is_file():
        path = Path(uri[len("file://") :])
        lines = [(str(path), i, ln) for i, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
    else:
        store = open_store(uri)
        keys = [k for k in store.list() if k.endswith(".jsonl")]
        lines = [(f"{uri}/{k}", i, ln.decode("utf-8")) for k, i, ln in jsonl_lines(store, keys)]
    items = []
    for src, i, ln in lines:
        if not ln.strip():
            continue
        try:
            obj = json.loads(ln)
        except ValueError as exc:
            raise ValueError(f"{src}:{i}: not valid JSON ({exc.msg})") from None
        items.append(parse_item(obj, f"{src}:{i}: "))
    if not items:
        raise ValueError(f"no task item under {uri}")
    return items


# ---- model access ------------------------------------------------------------------------------


def eval_device() -> torch.device:
    """A GPU when the evaluate pod has one (a 1.8b proxy scores far faster there), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_run_model(run: ObjectStore, workdir: Path):
    """(model with the final weights on `eval_device()`, tokenizer) from a pretrain output's hf/ export."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    dest = StageOutput(run).fetch_hf(workdir / "pretrain").model_dir
    model = AutoModelForCausalLM.from_pretrained(dest, attn_implementation="sdpa", dtype=torch.float32)
    model.to(eval_device()).eval()
    return model, PreTrainedTokenizerFast.from_pretrained(dest)


def valid_curve(steps: list[dict]) -> list[dict]:
    """[{step, valid_loss}] from a run's step records: the pretrain stage computed it in its loop
    every `evalEvery` steps and after the last one."""
    return [{"step": r["step"], "valid_loss": r["valid_loss"]} for r in steps if "valid_loss" in r]


# ---- likelihood and generation -----------------------------------------------------------------


@torch.no_grad()
def loglikelihoods(model, tokenizer, pairs: list[tuple[str, str]], *, batch: int = 32) -> list[tuple[float, int]]:
    """(sum of log p(continuation | context), continuation tokens) for each (context, continuation)."""
    pad = tokenizer.pad_token_id
    eod = tokenizer.convert_tokens_to_ids("<eod>")
    encoded = []
    for ctx, cont in pairs:
        c = tokenizer(ctx, add_special_tokens=False)["input_ids"] or [eod]  # an empty context: a document start
        x = tokenizer(cont, add_special_tokens=False)["input_ids"]
        if not x:
            raise ValueError(f"empty continuation after {ctx[-40:]!r}")
        encoded.append((c, x))
    out = []
    for i in range(0, len(encoded), batch):
        chunk = encoded[i : i + batch]
        seqs = [c + x for c, x in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        for j, (c, x) in enumerate(chunk):
            positions = torch.arange(len(c) - 1, len(c) + len(x) - 1, device=logp.device)
            out.append((float(logp[j, positions, torch.tensor(x, device=logp.device)].sum()), len(x)))
    return out


@torch.no_grad()
def greedy(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch: int = 32) -> list[str]:
    """Greedy continuations (left-padded batches, no KV cache: the proxy models are small)."""
    pad = tokenizer.pad_token_id
    stop = {tokenizer.convert_tokens_to_ids(t) for t in ("<eod>",)}
    results = []
    for i in range(0, len(prompts), batch):
        enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[i : i + batch]]
        width = max(len(e) for e in enc)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=model.device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=model.device)
        new = [[] for _ in enc]
        done = [False] * len(enc)
        for _ in range(max_new_tokens):
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            nxt = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].argmax(-1)
            for j, t in enumerate(nxt.tolist()):
                if not done[j]:
                    if t in stop:
                        done[j] = True
                    else:
                        new[j].append(t)
            if all(done):
                break
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones((len(enc), 1), dtype=torch.long, device=mask.device)], dim=1)
        results += [tokenizer.decode(n, skip_special_tokens=True) for n in new]
    return results


_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT).split())


def letter_of(generation: str, n_choices: int) -> str | None:
    m = re.match(r"\s*\(?([A-J])\b", generation)
    return m.group(1) if m and LETTERS.index(m.group(1)) < n_choices else None


def mc_generated_correct(generation: str, item: Item) -> bool:
    """Right if the generation names the right letter, or contains the right option's text and no other's."""
    letter = letter_of(generation, len(item.choices))
    if letter is not None:
        return letter == LETTERS[item.answer]
    gen = normalize(generation)
    hits = [k for k, c in enumerate(item.choices) if normalize(c) and normalize(c) in gen]
    return hits == [item.answer]


def gen_scores(generation: str, answers: list[str]) -> tuple[bool, bool]:
    first = normalize(generation.strip().split("\n")[0]) if generation.strip() else ""
    gen = normalize(generation)
    norm = [normalize(a) for a in answers]
    return first in norm, any(a and a in gen for a in norm)


def best_choice(scores: list[tuple[float, int]], *, per_token: bool = False) -> int:
    """Index of the option with the highest summed log-likelihood, or per token (length-normalised).
    `scores` are (sum of log-probs, tokens) per option, as `loglikelihoods` returns; ties go to the first."""
    return int(np.argmax([s / max(1, n) if per_token else s for s, n in scores]))


# ---- the harness -------------------------------------------------------------------------------


def _options(item: Item) -> str:
    return "\n".join(f"{LETTERS[k]}. {c}" for k, c in enumerate(item.choices))


def evaluate_tasks(model, tokenizer, items: list[Item], *, max_new_tokens: int = 8) -> dict:
    """{task: {"scores": {rule: mean over templates}, "templates": {template: {rule: accuracy}}, "items": n}}."""
    by_task: dict[str, list[Item]] = {}
    for it in items:
        by_task.setdefault(it.task, []).append(it)
    results = {}
    for task, its in sorted(by_task.items()):
        kinds = {it.type for it in its}
        if len(kinds) > 1:
            raise ValueError(f"task {task!r} mixes mc and gen items")
        per_template = (
            _evaluate_mc(model, tokenizer, its, max_new_tokens)
            if kinds == {"mc"}
            else _evaluate_gen(model, tokenizer, its, max_new_tokens)
        )
        rules = sorted({r for t in per_template.values() for r in t})
        scores = {r: float(np.mean([t[r] for t in per_template.values() if r in t])) for r in rules}
        results[task] = {"type": kinds.pop(), "items": len(its), "scores": scores, "templates": per_template}
    return results


def _evaluate_mc(model, tokenizer, items: list[Item], max_new_tokens: int) -> dict:
    out = {}
    answers = np.array([it.answer for it in items])
    for name, template in MC_TEMPLATES.items():
        prompts = [template.format(question=it.question, options=_options(it)) for it in items]
        pairs = [(p, " " + c) for p, it in zip(prompts, items) for c in it.choices]
        ll = loglikelihoods(model, tokenizer, pairs)
        scores, k = {}, 0
        content, norm = [], []
        for it in items:
            part = ll[k : k + len(it.choices)]
            k += len(it.choices)
            content.append(best_choice(part))
            norm.append(best_choice(part, per_token=True))
        scores["content"] = float(np.mean(np.array(content) == answers))
        scores["content_norm"] = float(np.mean(np.array(norm) == answers))
        if "{options}" in template:
            pairs = [(p, " " + LETTERS[j]) for p, it in zip(prompts, items) for j in range(len(it.choices))]
            ll = loglikelihoods(model, tokenizer, pairs)
            letters, k = [], 0
            for it in items:
                letters.append(best_choice(ll[k : k + len(it.choices)]))
                k += len(it.choices)
            scores["letter"] = float(np.mean(np.array(letters) == answers))
            gens = greedy(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
            scores["generated"] = float(np.mean([mc_generated_correct(g, it) for g, it in zip(gens, items)]))
        out[name] = scores
    return out


def _evaluate_gen(model, tokenizer, items: list[Item], max_new_tokens: int) -> dict:
    out = {}
    for name, template in GEN_TEMPLATES.items():
        gens = greedy(
            model, tokenizer, [template.format(question=it.question) for it in items], max_new_tokens=max_new_tokens
        )
        marks = [gen_scores(g, it.answers) for g, it in zip(gens, items)]
        out[name] = {"exact": float(np.mean([m[0] for m in marks])), "contains": float(np.mean([m[1] for m in marks]))}
    return out


def evaluate_run(run_uri: str, *, valid: bool, items: list[Item], workdir: Path, max_new_tokens: int = 8) -> dict:
    """Every evaluation of one run: {"valid_curve", "valid_loss", "train_curve", "train_loss", "benchmarks"}."""
    torch.manual_seed(0)
    run = open_store(run_uri)
    steps = StageOutput(run).step_records()
    result: dict = {}
    if valid:
        result["valid_curve"] = valid_curve(steps)
        if not result["valid_curve"]:
            raise ValueError(
                f"{run_uri}: the metrics log holds no valid_loss (the run was trained without inputs.valid)"
            )
        result["valid_loss"] = result["valid_curve"][-1]["valid_loss"]
    result["train_curve"] = [{"step": r["step"], "loss": r["loss"]} for r in steps]
    tail = steps[-max(1, len(steps) // 10) :]
    result["train_loss"] = float(np.mean([r["loss"] for r in tail]))
    if items:
        workdir.mkdir(parents=True, exist_ok=True)
        model, tokenizer = load_run_model(run, workdir)
        result["benchmarks"] = evaluate_tasks(model, tokenizer, items, max_new_tokens=max_new_tokens)
    return result
