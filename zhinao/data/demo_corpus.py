"""The demo's small real-text corpus, built from text every Python install has, with planted faults.

Real text: docstrings of the standard library, read with `ast` from the source files (nothing is
imported, so no module runs), and the language-reference topics of `pydoc_data` as long-form
"books". Sources follow the module family (math-like modules are `math`, function bodies of a few
modules are `code`). Planted on top, so that every step of the data stage removes something:
blacklisted URLs, sensitive keywords, URL and exact duplicates, non-English pages, English pages
with Chinese, rule-breaking and junk pages, near-duplicates, paragraphs and sentences repeated across
pages, PII, and bad lines (malformed JSON, invalid UTF-8, missing or empty text, a gigantic page).
Every planted record carries a `planted` field naming what it exercises. Deterministic per seed
(and per Python version, whose stdlib it reads).
"""

import ast
import json
import os
import random
import re
import sysconfig

from zhinao.storage import open_store

_SKIP_DIRS = {
    "test",
    "tests",
    "site-packages",
    "idlelib",
    "lib2to3",
    "__pycache__",
    "turtledemo",
    "tkinter",
    "ensurepip",
    "pydoc_data",
}
_MATH = ("math", "statistics", "fractions", "decimal", "_pydecimal", "random", "numbers", "cmath", "colorsys")
_CODE = (
    "textwrap",
    "shlex",
    "heapq",
    "bisect",
    "fnmatch",
    "glob",
    "string",
    "graphlib",
    "keyword",
    "base64",
    "calendar",
)
N_FILES = 4


def _stdlib_files(rng: random.Random) -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    rng.shuffle(files)
    return files


_ITEM = re.compile(r"\s*(?:[-*+]\s|\d+[.)]\s|>>>|\.\.\.|\w[\w.()]*\s+--\s)")


def _reflow(doc: str) -> str:
    """Docstrings wrap prose at ~72 columns; a web page has one paragraph per line. In lists and
    examples, a wrapped continuation line is joined to the item it continues."""
    out = []
    for block in re.split(r"\n\s*\n", doc.strip()):
        lines = [ln.rstrip() for ln in block.splitlines() if ln.strip()]
        if not any(_ITEM.match(ln) for ln in lines):
            out.append(" ".join(ln.strip() for ln in lines))
            continue
        for ln in lines:
            if out and not _ITEM.match(ln) and not ln.lstrip().startswith((">>>", "...")) and ln[:1].isspace():
                out[-1] += " " + ln.strip()
            else:
                out.append(ln.strip())
    return "\n".join(out)


def _module_texts(path: str) -> tuple[str, list[str], list[str]]:
    """(module name, docstrings, function sources) of one stdlib file."""
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        with open(path, encoding="utf-8") as f:
            src = f.read()
        tree = ast.parse(src)
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return name, [], []
    docs, code = [], []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            d = ast.get_docstring(node)
            if d and len(d) >= 120:
                docs.append(_reflow(d))
        if isinstance(node, ast.FunctionDef) and name in _CODE:
            seg = ast.get_source_segment(src, node)
            if seg and 200 <= len(seg) <= 4000:
                code.append(seg)
    return name, docs, code


def _pack(pieces: list[str], target: int) -> list[str]:
    """Consecutive pieces joined into documents of about `target` characters."""
    docs, cur = [], []
    for p in pieces:
        cur.append(p)
        if sum(map(len, cur)) >= target:
            docs.append("\n".join(cur))
            cur = []
    if cur:
        docs.append("\n".join(cur))
    return docs


def real_documents(n_docs: int | None, rng: random.Random) -> list[dict]:
    import pydoc_data.topics

    records: list[dict] = []
    books = []
    for topic in sorted(pydoc_data.topics.topics):
        books += _pack([_reflow(t) for t in pydoc_data.topics.topics[topic].split("\n\n") if t.strip()], 2500)
    for i, text in enumerate(books[: max(4, (n_docs or 10**9) // 12)]):
        records.append({"text": text, "source": "books", "url": f"https://docs.python.example/reference/{i}"})
    for path in _stdlib_files(rng):
        if n_docs is not None and len(records) >= n_docs:
            break
        name, docs, code = _module_texts(path)
        source = "math" if name in _MATH else "webpages"
        page = os.path.relpath(path, sysconfig.get_paths()["stdlib"]).removesuffix(".py").replace(os.sep, ".")
        for j, text in enumerate(_pack(docs, 1200)):
            records.append({"text": text, "source": source, "url": f"https://docs.python.example/{page}/{j}"})
        for j, text in enumerate(code):
            records.append({"text": text, "source": "code", "url": f"https://code.python.example/{page}/{j}"})
    rng.shuffle(records)
    return records[:n_docs] if n_docs is not None else records


# ---- planted faults ----------------------------------------------------------------------------

_GERMAN = "Die Stadt liegt am Ufer eines breiten Flusses. Im Sommer kommen viele Besucher, um die alten Kirchen und die engen Gassen der Altstadt zu sehen. Die Einwohner leben vor allem vom Handel und vom Tourismus."
_FRENCH = "Le village se trouve au pied de la montagne. Chaque matin, les habitants descendent au marché pour vendre leurs fromages, leurs légumes et le pain cuit dans le vieux four communal."
_SPANISH = "La biblioteca de la ciudad abre todos los días excepto los domingos. Los estudiantes acuden por la tarde para preparar sus exámenes y consultar los libros de historia."
_CHINESE = [
    "这座城市位于一条宽阔的河流岸边，夏天有许多游客前来参观古老的寺庙和狭窄的街巷。当地居民主要以贸易和旅游业为生，近年来也发展了一些小型制造业。",
    "图书馆每天开放到晚上九点，学生们常常在下课后来这里复习功课、查阅资料。馆内还设有安静的阅读区和可以小声讨论的学习室，方便不同需求的读者。",
    "春天到来时，山坡上的茶园一片新绿。茶农们清晨上山采摘嫩芽，午后在作坊里炒制，整个村子都弥漫着淡淡的茶香。",
]
_CHINESE_PII = "本学期的数学兴趣小组每周三下午活动，内容包括几何作图、数列规律和简单的概率游戏。报名的同学请在周五前把回执交给班主任。"
_ARTICLE = [
    "The old harbour was rebuilt after the flood of 1953, when the sea wall gave way during a winter storm and the lower town was under water for two days.",
    "Engineers raised the new wall by three metres and added a set of gates that close automatically when the tide rises above a fixed mark.",
    "Today the harbour serves fishing boats and a small ferry, and the former warehouses along the quay have become shops, cafes and a maritime museum.",
]
_JUNK_EDGES = [
    "Home | About Us | Contact | Privacy Policy",
    "Skip to main content",
]
_JUNK_FOOTER = ["Copyright © 2023 Example Media Inc. All rights reserved.", "Share on Facebook Twitter LinkedIn Email"]
_JUNK_PAGE = [
    "This website uses cookies to improve your experience. Accept all cookies.",
    "Click here to subscribe to our newsletter for exclusive deals.",
    "Copyright © 2024 Example Shop Ltd. All rights reserved.",
    "Share on Facebook, Twitter, LinkedIn and Email.",
    "Login | Register | Forgot your password?",
    "Hot sale, free shipping worldwide, order today.",
    "Contact us: sales@shop.example | Call now.",
    "The product ships in two days.",
]
_BOILERPLATE = "Note: this page is generated from the module sources and may lag behind the newest interpreter release, so check the changelog before relying on a detail."
_REPEATED_SENTENCE = "As with every function in this module, the behaviour described here applies to all supported platforms unless a note says otherwise."


def _edit(text: str, rng: random.Random, n_edits: int) -> str:
    words = text.split(" ")
    for _ in range(n_edits):
        i = rng.randrange(len(words))
        words[i] = rng.choice(["also", "then", "usually", "quickly", "still", "often"])
    return " ".join(words)


def plant(records: list[dict], rng: random.Random) -> list:
    """Planted documents and bad lines (str or bytes lines are written as they are)."""
    web = [r for r in records if r["source"] == "webpages" and len(r["text"]) > 600]
    pick = lambda: rng.choice(web)  # noqa: E731
    out: list = []

    def add(kind: str, text: str, **extra) -> None:
        out.append(
            {
                "text": text,
                "source": extra.pop("source", "webpages"),
                "url": extra.pop("url", f"https://planted.example/{kind}/{len(out)}"),
                "planted": kind,
                **extra,
            }
        )

    add("url_blacklist", pick()["text"], url="http://casino-bonus.example/promo/1")
    add("url_blacklist", pick()["text"], url="https://www.adult-videos.example/watch")
    add("keywords", pick()["text"] + "\nJoin the best online casino today and claim your welcome bonus.")
    add("keywords", _CHINESE[0] + "\n欢迎访问网络赌场，注册即送大礼包。")
    dup = pick()
    add("url_dup", _edit(dup["text"], rng, 40), url=dup["url"])
    add("exact_dup", pick()["text"])
    add("exact_dup", pick()["text"])
    for text in (_GERMAN, _FRENCH, _SPANISH):
        add("lang_id", text)
    add("english_with_chinese", pick()["text"] + "\nSee also 模块文档 for details.")
    for text in _CHINESE:
        add("chinese", text)
    # One page per rule (appendix A).
    add(
        "rule_punct",
        "Best deals here!!! Buy now!!! ### $$$ >>> <<< *** Only today, for everyone!!! ~~~ @@@ Click the link below!!! ((( ))) [[[ ]]] Great prices and fast delivery!!! ;;; ::: %%% &&&",
    )
    add(
        "rule_ellipsis",
        "\n".join(f"And then the story of part {i} continues with the hero walking on..." for i in range(8)),
    )
    add(
        "rule_no_terminal",
        "\n".join(f"Item number {i} of the catalogue with a long description and no ending mark" for i in range(10)),
    )
    add(
        "rule_word_length",
        " ".join(
            ["Supercalifragilisticexpialidociousandmorewordsjoinedtogether"] * 6 + ["is a very long word indeed."]
        ),
    )
    add(
        "rule_repeated_sentences",
        " ".join(["Buy the best shoes in town today."] * 6 + ["They are cheap and good for running."]),
    )
    add(
        "rule_short_paragraphs",
        "Latest news today.\n"
        + "\n".join(["Click.", "Yes.", "Next.", "More.", "Stop."])
        + "\nThe weather will be fine tomorrow, with sun in the morning.",
    )
    add("rule_repeated_ngrams", " ".join(["the cat sat on the mat"] * 12) + ".")
    add(
        "exam",
        "第1题 下列哪一项是正确的？\nA. 水在零度结冰\nB. 水在五十度结冰\nC. 水不会结冰\nD. 以上都不对\n答案：A\n解析：在标准大气压下，水的凝固点是零摄氏度。",
        source="webpages",
    )
    add("junk_page", "\n".join(_JUNK_PAGE))
    add("junk_edges", "\n".join(_JUNK_EDGES + _ARTICLE + _JUNK_FOOTER))
    long_pages = [r for r in web if len(r["text"]) > 1100]
    for k in range(4):
        add("near_dup", _edit(rng.choice(long_pages)["text"], rng, 1 + k // 2))
    # The same boilerplate paragraph on 10 pages, the same long sentence inside 9 paragraphs.
    for r in rng.sample(web, 10):
        r["text"] = r["text"] + "\n" + _BOILERPLATE
        r["planted"] = "repeated_paragraph"
    for r in rng.sample([r for r in web if "planted" not in r], 9):
        first, _, rest = r["text"].partition("\n")
        r["text"] = f"{first} {_REPEATED_SENTENCE}\n{rest}".rstrip("\n")
        r["planted"] = "repeated_sentence"
    add(
        "pii",
        pick()["text"]
        + "\nFor questions write to maintainer@python.example or call +1 415-555-0137; the mirror runs at 192.0.2.44.",
    )
    add("pii", _CHINESE_PII + "\n如有疑问请联系张老师，电话13812345678，邮箱zhang.laoshi@school.example。")
    # Bad lines.
    out.append('{"text": "an unterminated line, "source": ')
    out.append("this is not json at all")
    out.append(b'{"text": "invalid \xff\xfe utf-8 bytes", "source": "webpages"}')
    out.append(json.dumps({"body": "no text field here", "source": "webpages"}))
    out.append(json.dumps({"text": "   \n  ", "source": "webpages"}))
    out.append(json.dumps({"text": ("A gigantic page. " * 70_000), "source": "webpages", "planted": "gigantic"}))
    return out


def build_demo_corpus(store_uri: str, *, n_docs: int | None = 1500, seed: int = 0) -> dict:
    """Write `corpus/part-0000N.jsonl` (4 files) under `store_uri`; returns counts per planted kind.
    n_docs: real documents to take (None: the whole stdlib, about 5,000)."""
    rng = random.Random(seed)
    records = real_documents(n_docs, rng)
    planted = plant(records, rng)
    lines: list = [r for r in records] + planted
    order = list(range(len(lines)))
    rng.shuffle(order)
    # Near-duplicates and copies must come after their originals for "keep the smallest id" to keep the original.
    order.sort(
        key=lambda i: (
            1 if isinstance(lines[i], dict) and lines[i].get("planted") in ("url_dup", "exact_dup", "near_dup") else 0
        )
    )
    store = open_store(store_uri)
    per = -(-len(order) // N_FILES)
    for f in range(N_FILES):
        chunk = []
        for i in order[f * per : (f + 1) * per]:
            item = lines[i]
            if isinstance(item, dict):
                chunk.append(json.dumps(item, ensure_ascii=False).encode("utf-8"))
            else:
                chunk.append(item if isinstance(item, bytes) else item.encode("utf-8"))
        store.put_bytes(f"corpus/part-{f:05d}.jsonl", b"\n".join(chunk) + b"\n")
    counts: dict[str, int] = {"real": len(records), "bad_lines": sum(not isinstance(x, dict) for x in planted)}
    for item in lines:
        if isinstance(item, dict) and "planted" in item:
            counts[item["planted"]] = counts.get(item["planted"], 0) + 1
    counts["lines"] = len(lines)
    counts["files"] = N_FILES
    return counts
