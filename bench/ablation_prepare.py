"""The ablation's prepare step on 1 rank and on 2 gloo ranks: wall time, CPU seconds and peak RSS of
each rank, and where each rank's time and memory go, at several corpus sizes.

The job runs as in its pods: `zhinao_k8s.jobs.ablation_step main(["prepare"])`, one fresh process
per rank (RANK, WORLD_SIZE, MASTER_ADDR/MASTER_PORT), the Ablation in ZHINAO_ABLATION_SPEC, the
tokenizer single-threaded (RAYON_NUM_THREADS=1: a rank is a 1-CPU pod). The corpus is the
standard library's docs and code (zhinao.data.demo_corpus `real_documents`), numbered and cycled to
the size, in files of at most 10 MB as a data stage's bounded parts (each rank reads whole files; of
a single file, every 2nd line): the base, recipe `a` other documents half that size, recipe `b` the
base itself. `proxy.tokens` is 90% of
the base's training tokens, so each mixture is about the size of the corpus; shard and part sizes
are the defaults. The store is `file://` (the S3 path is the same code; its test covers 2 ranks on
SeaweedFS). The 2-rank preparation must equal the 1-rank one file for file, or the bench fails.

`--memory-check-mb` then prepares on 1 rank with small buffers (4 MiB part files, 1M-token shards),
full at every size, so what grows with the corpus is what the preparation keeps per document.

Phases are each rank's exclusive wall seconds in the preparation's steps, timed by wrapping them in
the child (prepare looks them up at call time; nothing else changes): `tokenizer`, `valid`,
`mixture` and `merge` run on rank 0 alone, `measure` and `pack` on every rank for its share,
`collectives` is the time in gather/broadcast/barrier (on rank 1 mostly waiting for rank 0), and
`other` the rest of main() (spec, process group, fetching the tokenizer, the built-in SFT data).

    python bench/ablation_prepare.py [--sizes-mb 10 40 80] [--memory-check-mb 10 80]
"""

import argparse
import functools
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

HERE = Path(__file__).parent
REPO = HERE.parent
RESULTS = HERE / "results" / "ablation_prepare.json"
MACHINE = "2-core shared x86_64, no GPU"
FILE_MB = 10
SMALL_BUFFERS = "ZHINAO_BENCH_SMALL_BUFFERS"
SMALL_PART_BYTES, SMALL_SHARD_TOKENS = 4 * 2**20, 1 << 20
BYTES_PER_TOKEN = 4.4
"""JSONL bytes per token of this text with the default 8,192-token vocabulary (measured once); sets
`proxy.tokens`, whose coverage the summary's passes report."""
SEQ_LEN = 2048
RANK_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# -- set-up --------------------------------------------------------------------------------------


def write_corpus(dest: Path, mb: float, *, first_cycle: int) -> int:
    """`mb` MB of JSONL in files of at most FILE_MB, cycling through the real documents; each cycle's
    documents are numbered and under their own host, so no two are equal and topics do not repeat.
    Returns the number of documents."""
    docs = real_docs()
    dest.mkdir(parents=True)
    files = math.ceil(mb / FILE_MB)
    per_file = mb * 10**6 / files
    n = 0
    for part in range(files):
        with open(dest / f"part-{part:05d}.jsonl", "w") as f:
            written = 0
            while written < per_file:
                cycle, doc = divmod(n, len(docs))
                rec = docs[doc]
                line = json.dumps(
                    {
                        "text": f"{n}. {rec['text']}",
                        "source": rec["source"],
                        "url": rec["url"].replace("://", f"://c{first_cycle + cycle}.", 1),
                    }
                )
                f.write(line + "\n")
                written += len(line) + 1
                n += 1
    return n


@functools.cache
def real_docs() -> list[dict]:
    from zhinao.data.demo_corpus import real_documents

    return real_documents(None, random.Random(0))


def ablation_spec(storage: Path, base: Path, recipe: Path, *, tokens: int, seq_len: int) -> str:
    from zhinao_k8s.api.ablation import Ablation

    ablation = Ablation.model_validate(
        {
            "metadata": {"name": "bench"},
            "spec": {
                "storage": {"uri": f"file://{storage}"},
                "base": {"corpus": f"file://{base}"},
                "recipes": [{"name": "a", "dataset": f"file://{recipe}"}, {"name": "b", "dataset": f"file://{base}"}],
                "seeds": 1,
                "proxy": {  # only tokens and seqLen matter here; the rest keeps the runs' budget valid
                    "tokens": tokens,
                    "seqLen": seq_len,
                    "microBatchSize": 1,
                    "gradAccumSteps": 1,
                    "replicas": 1,
                    "nprocPerNode": 1,
                    "gpu": 0,
                    "warmupSteps": 1,
                },
            },
        }
    )
    return json.dumps(ablation.to_wire())


# -- one rank (a child process) ------------------------------------------------------------------


class Phases:
    """Exclusive wall seconds and peak RSS per labelled function: a labelled call inside another
    counts for its own label only, time outside any for `other`. The kernel's peak (VmHWM) is reset
    at each change of label (/proc/self/clear_refs), so a label's peak is the process's while it ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.peak_mib: dict[str, float] = defaultdict(float)
        self.before_mib = rss_mib("VmHWM")  # the imports' peak
        reset_peak()
        self.stack: list[list] = [["other", time.perf_counter()]]  # [label, since] of the calls in progress

    def wrap(self, label: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.stack.append([label, self._close_stretch()])
            try:
                return fn(*args, **kwargs)
            finally:
                now = self._close_stretch()
                self.stack.pop()
                self.stack[-1][1] = now

        return timed

    def _close_stretch(self) -> float:
        """The running label's time and peak since it (re)started; returns now."""
        now = time.perf_counter()
        label, since = self.stack[-1]
        self.seconds[label] += now - since
        self.peak_mib[label] = max(self.peak_mib[label], rss_mib("VmHWM"))
        reset_peak()
        return now

    def close(self) -> float:
        """The whole peak, imports included."""
        self._close_stretch()
        return max(self.before_mib, *self.peak_mib.values())


def rss_mib(field: str) -> float:
    """This process's resident memory: VmRSS now or VmHWM its peak (its own: ru_maxrss carries the
    parent's peak over fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def instrument() -> Phases:
    import zhinao.ablation.prepare as prepare
    from zhinao.ablation.ranks import Ranks

    phases = Phases()
    for label, name in (
        ("setup", "finished"),  # the resume check and the built-in SFT data
        ("tokenizer", "ensure_tokenizer"),
        ("valid", "prepare_valid"),
        ("measure", "measure_share"),
        ("mixture", "write_mixture"),
        ("pack", "tokenize_span"),
        ("merge", "join_and_merge"),
    ):
        setattr(prepare, name, phases.wrap(label, getattr(prepare, name)))
    for name in ("gather", "on_main", "barrier"):
        setattr(Ranks, name, phases.wrap("collectives", getattr(Ranks, name)))
    return phases


def rank_child(out: Path) -> None:
    from zhinao_k8s.jobs.ablation_step import main

    if os.environ.get(SMALL_BUFFERS):
        import zhinao.ablation.mixture as mixture
        import zhinao.ablation.prepare as prepare

        for module, name, value in (
            (mixture, "PART_BYTES", SMALL_PART_BYTES),
            (prepare, "SHARD_TOKENS", SMALL_SHARD_TOKENS),
        ):
            getattr(module, name)  # renamed: fail here rather than set a constant nothing reads
            setattr(module, name, value)
    phases = instrument()
    at_start = rss_mib("VmRSS")  # after the imports: the code, no data yet
    wall, cpu = time.perf_counter(), time.process_time()
    code = main(["prepare"])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = phases.close()
    out.write_text(
        json.dumps(
            {
                "exit": code,
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "rss_at_start_mib": round(at_start, 1),
                "peak_rss_mib": round(peak, 1),
                "phases_s": {k: round(v, 2) for k, v in sorted(phases.seconds.items())},
                "phase_peak_rss_mib": {k: round(v, 1) for k, v in sorted(phases.peak_mib.items())},
            }
        )
    )


# -- the job: one process per rank ---------------------------------------------------------------


def run_job(spec: str, world_size: int, out: Path, *, small_buffers: bool = False) -> dict:
    """The prepare job on `world_size` fresh processes; each rank's figures and the job's wall time
    (process start to the last exit, so imports included)."""
    from zhinao_k8s.render.ablation import ENV_ABLATION_SPEC
    from zhinao_k8s.runner.local import free_port

    out.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in RANK_ENV} | {
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "operator"), os.environ.get("PYTHONPATH", "")]),
        ENV_ABLATION_SPEC: spec,
        "RAYON_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    if small_buffers:
        env[SMALL_BUFFERS] = "1"
    port = str(free_port())
    load = os.getloadavg()[0]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--rank-child", str(out / f"rank-{r}.json")],
            env=env
            | (
                {"RANK": str(r), "WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
                if world_size > 1
                else {}
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world_size)
    ]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - started
    for r, (p, err) in enumerate(zip(procs, errors, strict=True)):
        if p.returncode != 0:
            raise RuntimeError(f"rank {r} of {world_size} exited {p.returncode}: {err.strip()[-2000:]}")
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(world_size)]
    return {
        "job_wall_s": round(wall, 2),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "ranks": ranks,
    }


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file of a preparation but the index parts (they say which rank packed what)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "tokens/parts" not in p.relative_to(root).as_posix()
    }


def measure(
    mb: float, root: Path, *, seq_len: int = SEQ_LEN, world_sizes: tuple[int, ...] = (1, 2), small_buffers: bool = False
) -> dict:
    """A corpus of `mb` MB prepared by each of `world_sizes` ranks: the preparations' figures and,
    for several, whether their files equal the first's (None for one)."""
    base, recipe = root / "corpus" / "base", root / "corpus" / "recipe"
    docs = write_corpus(base, mb, first_cycle=0)
    recipe_docs = write_corpus(recipe, mb / 2, first_cycle=10_000)
    tokens = int(0.9 * mb * 10**6 / BYTES_PER_TOKEN)
    runs = {}
    for world_size in world_sizes:
        spec = ablation_spec(root / f"out-{world_size}", base, recipe, tokens=tokens, seq_len=seq_len)
        runs[str(world_size)] = run_job(spec, world_size, root / f"ranks-{world_size}", small_buffers=small_buffers)
    preps = [root / f"out-{w}" / "bench" / "prep" for w in world_sizes]
    files = [digests(p) for p in preps]
    summary = json.loads((preps[0] / "done.json").read_text())
    return {
        "corpus_mb": mb,
        "base_documents": docs,
        "recipe_a_documents": recipe_docs,
        "proxy_tokens": tokens,
        "seq_len": seq_len,
        "summary": summary,
        "files_compared": len(files[0]),
        "outputs_equal": all(f == files[0] for f in files[1:]) if len(files) > 1 else None,
        "runs": runs,
    }


# -- report --------------------------------------------------------------------------------------


LABELS = ["setup", "tokenizer", "valid", "measure", "mixture", "pack", "merge", "collectives", "other"]


def table(sizes: list[dict], figure: str = "phases_s") -> str:
    """One row per rank of each job: its time, CPU and peak, and `figure` (phases_s or
    phase_peak_rss_mib) per phase."""
    head = ["MB", "ranks", "job wall s", "rank", "wall s", "CPU s", "RSS at start MiB", "peak RSS MiB", *LABELS]
    rows = [head, ["---"] * len(head)]
    for size in sizes:
        for world_size, run in size["runs"].items():
            for r, rank in enumerate(run["ranks"]):
                rows.append(
                    [f"{size['corpus_mb']:g}", world_size, f"{run['job_wall_s']:.1f}", str(r), f"{rank['wall_s']:.1f}"]
                    + [f"{rank['cpu_s']:.1f}", f"{rank['rss_at_start_mib']:.0f}", f"{rank['peak_rss_mib']:.0f}"]
                    + [f"{rank[figure][k]:.1f}" if k in rank[figure] else "" for k in LABELS]
                )
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[10, 40, 80])
    parser.add_argument("--memory-check-mb", type=float, nargs="*", default=[10, 80])
    parser.add_argument("--rank-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_child:
        rank_child(args.rank_child)
        return
    result = {
        "date": date.today().isoformat(),
        "machine": MACHINE,
        "command": " ".join(["python", "bench/ablation_prepare.py", *sys.argv[1:]]),
        "sizes": [],
        "memory_check": {"part_bytes": SMALL_PART_BYTES, "shard_tokens": SMALL_SHARD_TOKENS, "sizes": []},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for mb in args.sizes_mb:
        with tempfile.TemporaryDirectory() as tmp:
            result["sizes"].append(measure(mb, Path(tmp)))
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")  # after each size: a long run keeps what it measured
        if not result["sizes"][-1]["outputs_equal"]:
            raise SystemExit(f"{mb:g} MB: the 2-rank preparation differs from the 1-rank one")
    for mb in args.memory_check_mb:
        with tempfile.TemporaryDirectory() as tmp:
            result["memory_check"]["sizes"].append(measure(mb, Path(tmp), world_sizes=(1,), small_buffers=True))
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("seconds per phase\n" + table(result["sizes"]))
    print("\npeak RSS per phase (MiB)\n" + table(result["sizes"], "phase_peak_rss_mib"))
    print("\nsmall buffers: peak RSS per phase (MiB)\n" + table(result["memory_check"]["sizes"], "phase_peak_rss_mib"))


if __name__ == "__main__":
    main()
