"""The built-in synthetic benchmark suite, built from the held-out validation topics.

No training run saw these texts (whole topics are held out), so the suite measures what the
model learned about the language of the corpus rather than what it memorised:

- `word-order` (mc, 2 choices): a held-out sentence against the same words shuffled.
- `next-word`  (mc, 4 choices): the first words of a sentence; its next word against three words
  drawn from other sentences.
- `last-word`  (gen): a sentence without its last word; the model must generate it.

Deterministic for a seed. A tiny proxy scores near chance on `last-word`: the ablation report
then flags it as insensitive, which is the point of measuring metric quality.
"""

import random
import re

from zhinao.ablation.evaluate import Item

_SENT = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*[,;:]?$")


def sentences(texts: list[str], *, min_words: int = 8, max_words: int = 24) -> list[list[str]]:
    """Prose sentences (mostly plain words) of the given length, as word lists."""
    out = []
    for text in texts:
        for line in text.split("\n"):
            for s in _SENT.split(line.strip()):
                words = s.split()
                if not min_words <= len(words) <= max_words or not s.endswith("."):
                    continue
                if sum(bool(_WORD.match(w)) for w in words[:-1]) < 0.9 * (len(words) - 1):
                    continue
                out.append(words)
    return out


def build_suite(texts: list[str], *, items_per_task: int = 100, seed: int = 0) -> list[Item]:
    rng = random.Random(seed)
    sents = sentences(texts)
    rng.shuffle(sents)
    if len(sents) < 4:
        raise ValueError(f"the held-out texts hold {len(sents)} usable sentences; the built-in suite needs more")
    vocab = sorted({w.strip(",;:.").lower() for s in sents for w in s if _WORD.match(w.rstrip("."))})
    items: list[Item] = []
    for words in sents[:items_per_task]:
        shuffled = words[:]
        for _ in range(10):
            rng.shuffle(shuffled)
            if shuffled != words:
                break
        choices = [" ".join(words), " ".join(shuffled)]
        order = rng.sample([0, 1], 2)
        items.append(
            Item("word-order", "mc", "Which sentence reads naturally?", [choices[i] for i in order], order.index(0))
        )
    for words in sents[:items_per_task]:
        cut = rng.randrange(4, len(words) - 1)
        target = words[cut].strip(",;:.")
        distractors = rng.sample([w for w in vocab if w != target.lower()], 3)
        choices = [target] + distractors
        rng.shuffle(choices)
        items.append(Item("next-word", "mc", " ".join(words[:cut]), choices, choices.index(target)))
    for words in sents[:items_per_task]:
        last = words[-1].rstrip(".")
        if _WORD.match(last):
            items.append(Item("last-word", "gen", " ".join(words[:-1]), answers=[last]))
    return items
