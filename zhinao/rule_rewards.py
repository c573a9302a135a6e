"""Rule-based rewards, added to the reward model's score in RLHF (report section 3.2).

The report adds rule rewards for Chinese-English code-switching and function-call correctness
to task-specific RMs. Each rule is `fn(record, response) -> float`, where `record` is the prompt's
JSONL record (it may carry the checkable facts: `answer`, `lang`, `tools`, `expectCall`).
"""

import json
import re
from collections.abc import Callable

RuleFn = Callable[[dict, str], float]

_INT = re.compile(r"-?\d+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")


def arithmetic(record: dict, response: str) -> float:
    """1 when the first integer in the response equals the record's `answer`, else 0."""
    match = _INT.search(response)
    return float(match is not None and int(match.group()) == int(record["answer"]))


def script_counts(text: str) -> tuple[int, int]:
    """(CJK characters, Latin words of 2+ letters)."""
    return len(_CJK.findall(text)), len(_LATIN_WORD.findall(text))


def code_switch(record: dict, response: str) -> float:
    """Minus the share of the response written in the other script, in [-1, 0].

    The expected language is the record's `lang` (`zh` or `en`), else the dominant script of the
    prompt. A CJK character and a Latin word count as one unit each.
    """
    lang = record.get("lang")
    if lang is None:
        prompt = record.get("prompt", "")
        text = prompt if isinstance(prompt, str) else " ".join(m.get("content", "") for m in prompt)
        cjk, latin = script_counts(text)
        lang = "zh" if cjk >= latin else "en"
    cjk, latin = script_counts(response)
    if cjk + latin == 0:
        return 0.0
    other = latin if lang == "zh" else cjk
    return -other / (cjk + latin)


def _first_json_object(text: str) -> dict | None:
    start = text.find("{")
    while start != -1:
        depth = 0
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    try:
                        value = json.loads(text[start : i + 1])
                    except ValueError:
                        break
                    return value if isinstance(value, dict) else None
        start = text.find("{", start + 1)
    return None


def function_call(record: dict, response: str) -> float:
    """Function-call format and correctness against the record's `tools`.

    A call is the first JSON object {"name": ..., "arguments": {...}} in the response. When the
    record expects a call (`expectCall`, default true when `tools` is non-empty): 1 for a call to a
    listed tool with every required argument, 0 otherwise. When it expects none: -1 for any call
    (a false recall, which the report's RL reduced), 0 without.
    """
    tools = {t["name"]: t for t in record.get("tools", [])}
    expect = record.get("expectCall", bool(tools))
    call = _first_json_object(response)
    is_call = call is not None and "name" in call
    if not expect:
        return -1.0 if is_call else 0.0
    if not is_call or call["name"] not in tools or not isinstance(call.get("arguments", {}), dict):
        return 0.0
    required = tools[call["name"]].get("parameters", {}).get("required", [])
    return float(all(arg in call.get("arguments", {}) for arg in required))


RULES: dict[str, RuleFn] = {"arithmetic": arithmetic, "code_switch": code_switch, "function_call": function_call}


def score(record: dict, response: str, weights: dict[str, float]) -> float:
    """Weighted sum of the named rules."""
    return float(sum(w * RULES[name](record, response) for name, w in weights.items()))  # 0.0, not 0, without rules
