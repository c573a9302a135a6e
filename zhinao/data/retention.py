"""The retention cascade (report Fig. 1): documents and bytes in, out and removed by every step.

Bytes are UTF-8 bytes of document text; the `input` row also counts the raw bytes of lines that
never became documents. Steps that edit text (junk trimming, PII, paragraph and sentence dedup)
remove bytes without removing documents; `mix` can add documents (oversampling).
"""

import json
from collections import Counter
from dataclasses import dataclass, field

from zhinao.artifacts import REPORT as REPORT_PREFIX
from zhinao.storage import ObjectStore


@dataclass
class StepStats:
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    reasons: Counter = field(default_factory=Counter)


class Cascade:
    """Per-step counters of one rank, in processing order; `merge` adds ranks together."""

    def __init__(self, names: list[str]):
        self.steps = {n: StepStats() for n in names}

    def record(
        self,
        names: tuple[str, ...],
        bytes_in: int,
        bytes_out: int,
        drop_step: str | None,
        reason: str = "",
        copies: int = 1,
    ) -> None:
        """One document through a step reporting `names` (a step may own several cascade rows, the
        document is dropped at `drop_step` or passes all of them)."""
        for i, name in enumerate(names):
            s = self.steps[name]
            s.docs_in += 1
            s.bytes_in += bytes_in
            if name == drop_step:
                s.reasons[reason.split(":", 1)[0]] += 1
                return
            last = i == len(names) - 1
            s.docs_out += copies if last else 1
            s.bytes_out += (bytes_out * copies) if last else bytes_in

    def record_bad_input(self, raw_bytes: int, reason: str) -> None:
        s = self.steps["input"]
        s.docs_in += 1
        s.bytes_in += raw_bytes
        s.reasons[reason] += 1

    def to_rows(self) -> list[dict]:
        return [
            {
                "step": n,
                "docs_in": s.docs_in,
                "docs_out": s.docs_out,
                "bytes_in": s.bytes_in,
                "bytes_out": s.bytes_out,
                "reasons": dict(s.reasons),
            }
            for n, s in self.steps.items()
        ]

    @classmethod
    def merge(cls, parts: list[list[dict]]) -> list[dict]:
        """Sum the rows of several ranks (same steps, same order) and add the removed columns."""
        rows = []
        for i, first in enumerate(parts[0]):
            row = {"step": first["step"], "reasons": Counter()}
            for key in ("docs_in", "docs_out", "bytes_in", "bytes_out"):
                row[key] = sum(p[i][key] for p in parts)
            for p in parts:
                row["reasons"].update(p[i]["reasons"])
            row["reasons"] = dict(row["reasons"].most_common())
            row["docs_removed"] = row["docs_in"] - row["docs_out"]
            row["bytes_removed"] = row["bytes_in"] - row["bytes_out"]
            row["docs_removed_pct"] = _pct(row["docs_removed"], row["docs_in"])
            row["bytes_removed_pct"] = _pct(row["bytes_removed"], row["bytes_in"])
            rows.append(row)
        return rows


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def format_table(report: dict) -> str:
    """The cascade (and the mix, when present) as Markdown."""
    lines = [
        "| step | docs in | docs out | docs removed | % | bytes in | bytes out | bytes removed | % | top reasons |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["steps"]:
        reasons = ", ".join(f"{k} {v}" for k, v in list(r["reasons"].items())[:3])
        lines.append(
            f"| {r['step']} | {r['docs_in']:,} | {r['docs_out']:,} | {r['docs_removed']:,} | {r['docs_removed_pct']:.1f} "
            f"| {_size(r['bytes_in'])} | {_size(r['bytes_out'])} | {_size(r['bytes_removed'])} | {r['bytes_removed_pct']:.1f} | {reasons} |"
        )
    mix = report.get("mix")
    if mix:
        lines += [
            "",
            "| source | est. tokens in | target share | factor | est. tokens out | share out |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        total_out = sum(mix["tokens_out"].values()) or 1
        for k in sorted(mix["tokens_in"], key=lambda k: -mix["tokens_in"][k]):
            lines.append(
                f"| {k} | {mix['tokens_in'][k]:,} | {100 * mix['targets'].get(k, 0):.2f}% | {mix['factors'].get(k, 1):.2f} "
                f"| {mix['tokens_out'].get(k, 0):,} | {100 * mix['tokens_out'].get(k, 0) / total_out:.2f}% |"
            )
        lines.append("")
        lines.append("Tokens are estimated as UTF-8 bytes / 4 (the tokenizer is trained after this stage).")
    files = report.get("files") or {}
    if files.get("rejected") or files.get("skipped"):
        lines += ["", "| input file | problem | lines read |", "|---|---|---:|"]
        for f in files.get("rejected", []):
            lines.append(f"| {f['file']} | {f['reason']}: {f['detail']} | {f['lines_read']:,} |")
        for f in files.get("skipped", []):
            lines.append(f"| {f['file']} | skipped: {f['reason']} | 0 |")
    return "\n".join(lines) + "\n"


def plot_cascade(report: dict, path: str) -> None:
    """Two panels, documents and bytes remaining after each step, removed share annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["steps"]
    names = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(rows) + 1.8), sharey=True)
    for ax, unit, label in ((axes[0], "docs", "documents"), (axes[1], "bytes", "bytes")):
        out = [r[f"{unit}_out"] for r in rows]
        removed = [r[f"{unit}_removed"] for r in rows]
        y = range(len(rows))
        ax.barh(y, out, color="#4C72B0", label=f"{label} kept")
        ax.barh(y, [max(x, 0) for x in removed], left=out, color="#DD8452", label=f"{label} removed")
        for i, r in enumerate(rows):
            pct = r[f"{unit}_removed_pct"]
            # Oversampling adds: show it as a gain rather than a negative removal.
            ax.text(
                max(r[f"{unit}_in"], r[f"{unit}_out"]),
                i,
                f" -{pct:.1f}%" if pct >= 0 else f" +{-pct:.1f}%",
                va="center",
                fontsize=8,
            )
        ax.set_title(f"{label} remaining after each step")
        ax.set_xlim(0, max(max(r[f"{unit}_in"], r[f"{unit}_out"]) for r in rows) * 1.18 or 1)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2, fontsize=8, frameon=False)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.suptitle("Data processing retention cascade")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_retention(store: ObjectStore, report: dict, *, tmp_png: str) -> dict[str, str]:
    """retention.json, retention.md and retention.png under `report/`; returns their URLs."""
    store.put_bytes(f"{REPORT_PREFIX}/retention.json", json.dumps(report, indent=2, ensure_ascii=False).encode())
    store.put_bytes(f"{REPORT_PREFIX}/retention.md", format_table(report).encode())
    plot_cascade(report, tmp_png)
    store.put_file(f"{REPORT_PREFIX}/retention.png", tmp_png)
    return {n: store.url(f"{REPORT_PREFIX}/retention.{n}") for n in ("json", "md", "png")}


RETENTION_JSON = f"{REPORT_PREFIX}/retention.json"


def has_retention(store: ObjectStore) -> bool:
    """Whether a data-stage output holds its retention cascade."""
    return store.exists(RETENTION_JSON)


def read_retention(store: ObjectStore) -> dict:
    """The report of a finished data-stage run (store opened at the stage's output)."""
    return json.loads(store.get_bytes(f"{REPORT_PREFIX}/retention.json"))


def show_retention(store: ObjectStore) -> str:
    """What `zhinao-k8s data report <output>` prints: the cascade table and where the files are
    (store: what the data stage published)."""
    report = read_retention(store)
    where = "\n".join(f"{n}: {store.url(f'{REPORT_PREFIX}/retention.{n}')}" for n in ("json", "md", "png"))
    return format_table(report) + "\n" + where + "\n"
