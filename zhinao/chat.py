"""The 360Zhinao chat format and its SFT label mask (pure: a tokenizer in, token ids out).

Every turn is `<|im_start|>{role}\\n{content}<|im_end|>\\n`. Labels follow the reference
`finetune.py` token for token:

    turn        <|im_start|>  role  \\n   content   <|im_end|>  \\n
    system/user    trained    mask  mask   mask      trained   trained
    assistant      trained    mask  mask  trained    trained   trained

Each piece is tokenized on its own and the ids concatenated (as the reference does), so a turn's
boundaries never depend on BPE merges across pieces, and a prompt encoded for generation is a
prefix of the same conversation encoded for training.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from zhinao.tokenizer import IM_END, IM_START

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")

Message = dict[str, str]


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    """`input_ids` with every untrained position set to IGNORE_INDEX (not shifted)."""

    @property
    def trained(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


class ChatEncoder:
    """Encodes conversations for one tokenizer; caches the ids of the fixed pieces."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.im_start = tokenizer.convert_tokens_to_ids(IM_START)
        self.im_end = tokenizer.convert_tokens_to_ids(IM_END)
        self.newline = self._ids("\n")
        self._roles = {role: self._ids(role) for role in ROLES}

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _header(self, role: str) -> list[int]:
        if role not in self._roles:
            raise ValueError(f"unknown chat role {role!r}; expected one of {ROLES}")
        return [self.im_start, *self._roles[role], *self.newline]

    def turn(self, role: str, content: str, *, train_content: bool) -> Encoded:
        header, body, tail = self._header(role), self._ids(content), [self.im_end, *self.newline]
        ids = header + body + tail
        labels = [self.im_start] + [IGNORE_INDEX] * (len(header) - 1)
        labels += body if train_content else [IGNORE_INDEX] * len(body)
        labels += tail
        return Encoded(ids, labels)

    def conversation(self, messages: Sequence[Message], *, system: str | None = None) -> Encoded:
        """A whole conversation with the SFT labels; `system` is prepended when none is given."""
        messages = with_system(messages, system)
        ids: list[int] = []
        labels: list[int] = []
        for m in messages:
            t = self.turn(m["role"], m["content"], train_content=m["role"] == "assistant")
            ids += t.input_ids
            labels += t.labels
        return Encoded(ids, labels)

    def prompt(self, messages: Sequence[Message], *, system: str | None = None) -> list[int]:
        """The conversation so far plus the assistant header: what generation continues from."""
        return self.conversation(messages, system=system).input_ids + self._header("assistant")

    def completion(self, messages: Sequence[Message], response: str, *, system: str | None = None) -> Encoded:
        """Prompt + one assistant response, labels on the response only (content, <|im_end|>, \\n).

        The form the reward model and DPO/ORPO score; the header's <|im_start|> is not part of the
        response, so it is masked here (it is the same token for both responses of a pair).
        """
        prompt = self.prompt(messages, system=system)
        body = self._ids(response) + [self.im_end, *self.newline]
        return Encoded(prompt + body, [IGNORE_INDEX] * len(prompt) + body)

    def response_ids(self, response: str) -> list[int]:
        return self._ids(response) + [self.im_end, *self.newline]


def with_system(messages: Sequence[Message], system: str | None) -> list[Message]:
    messages = list(messages)
    if system is not None and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def render(messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
    """The conversation as text (what the ids decode to)."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def as_messages(prompt: str | Sequence[Message]) -> list[Message]:
    """A JSONL `prompt` field: a plain string is one user turn, a list is messages as they are."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    out = [{"role": m["role"], "content": m["content"]} for m in prompt]
    for m in out:
        if m["role"] not in ROLES:
            raise ValueError(f"unknown chat role {m['role']!r}")
    return out


def validate_sft_messages(messages: Sequence[Message]) -> None:
    """An SFT conversation must contain at least one assistant turn to train on."""
    if not messages:
        raise ValueError("empty conversation")
    for m in messages:
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"bad message {m!r}: needs role in {ROLES} and string content")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("conversation has no assistant turn")
