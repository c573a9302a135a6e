"""Data at scale (issue 12): memory of pretraining as the corpus grows, tokenization throughput, time
to the first batch, and the shard format against litdata; each side by side in one run.

1. Peak RSS of one pretrain rank (the whole stage: tokenize, read, train a few steps, export) on a
   corpus and on one 10x larger, with today's code (`--baseline-ref`, run from a `git archive` of it)
   and with the streaming path (`--ref`, default HEAD).
2. Tokenization throughput per CPU second: our tokenize step (`tokenize_share`, one rank) against
   Hugging Face `datasets` (`load_dataset("json")` + `.map(batched=True)`) with the same fast
   tokenizer, both single-threaded (RAYON_NUM_THREADS=1).
3. Time to the first batch on a cold start (the shards exist, the local cache is empty): our
   `TokenStream` against today's `load_tokens` (download every shard, then index).
4. The same corpus written and read with litdata (`optimize` + `StreamingDataset` with
   `TokensLoader`), when `--litdata PATH` names a directory it is installed in.

    python bench/token_stream.py [--small-mb 20] [--factor 10] [--litdata /tmp/litdata-probe]

Every measurement runs in a fresh child process (`--child ...`), so peak RSS is that of one job.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).parent
REPO = HERE.parent
RESULTS = HERE / "results" / "token_stream.json"
SEQ_LEN, MICRO_BATCH = 256, 8
BASELINE = "af1518e"  # main before the streaming path: rank 0 packs into lists, every rank loads every shard


def max_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: per address space, so not the parent's; ru_maxrss
    carries the parent's peak over fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- set-up --------------------------------------------------------------------------------------


def write_corpus(texts: list[str], dest: Path, mb: int) -> Path:
    """`mb` MB of JSONL in 10 MB files, cycling through `texts` (numbered, so no two are equal)."""
    dest.mkdir(parents=True)
    target, written, part, i = mb * 10**6, 0, 0, 0
    while written < target:
        with open(dest / f"part-{part:05d}.jsonl", "w") as f:
            in_file = 0
            while in_file < 10**7 and written + in_file < target:
                text = f"{i}. {texts[i % len(texts)]}"
                line = json.dumps({"text": text, "source": "code" if i % 3 else "web"}) + "\n"
                f.write(line)
                in_file += len(line)
                i += 1
        written += in_file
        part += 1
    return dest


def child(args: list[str], *, pythonpath: str, extra_env: dict | None = None) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": pythonpath,
        "RAYON_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise SystemExit(f"child {args[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- children ------------------------------------------------------------------------------------


def child_pretrain(corpus: str, tokenizer: str, work: str, steps: int) -> dict:
    """One pretrain rank, the whole stage, in this process (world size 1)."""
    return _pretrain({"tokenizer": f"file://{tokenizer}", "corpus": f"file://{corpus}"}, work, steps)


def child_pretrain_tokens(tokens: str, tokenizer: str, work: str, steps: int, copies: int) -> dict:
    """One pretrain rank reading an already tokenized corpus made of `copies` copies of the shards of
    `tokens` (an output directory holding tokens/index.json; hard links, so no disk is spent): the
    training side of a corpus `copies` times larger, without tokenizing it again."""
    src = Path(tokens) / "tokens"
    index = json.loads((src / "index.json").read_text())
    dest = Path(work) / "tokens-in" / "tokens"
    dest.mkdir(parents=True)
    shards = []
    for c in range(copies):
        for shard in index["shards"]:
            name = Path(shard["key"]).name.replace("-r00000-", f"-r{c:05d}-")
            os.link(src / Path(shard["key"]).name, dest / name)
            shards.append({**shard, "key": f"tokens/{name}"})
    for field in ("documents", "sequences", "tokens"):
        index[field] *= copies
    (dest / "index.json").write_text(json.dumps({**index, "shards": shards}))
    return _pretrain({"tokenizer": f"file://{tokenizer}", "tokens": f"file://{dest.parent}"}, work, steps)


def _pretrain(inputs: dict, work: str, steps: int) -> dict:
    from zhinao.config.pretrain import PretrainParams
    from zhinao.config.runtime import StageRuntime
    from zhinao.stages import pretrain

    os.environ.update(ZHINAO_WORKDIR=f"{work}/scratch", ZHINAO_METRICS_PORT="0", ZHINAO_PEAK_FLOPS="1e11")
    params = PretrainParams(
        seq_len=SEQ_LEN, micro_batch_size=MICRO_BATCH, max_steps=steps, warmup_steps=1, checkpoint_every=steps
    )
    rt = StageRuntime(
        pipeline="bench",
        stage="pretrain",
        kind="pretrain",
        params=params.to_wire(),
        inputs=inputs,
        output=f"file://{work}/out",
    )
    began, cpu0 = time.perf_counter(), time.process_time()
    pretrain.run(rt, params)
    return {
        "seconds": time.perf_counter() - began,
        "cpu_seconds": time.process_time() - cpu0,
        "peak_rss_mb": max_rss_mb(),
    }


def child_first_batch(tokens: str, work: str) -> dict:
    """Seconds from nothing local to the first micro-batch in hand, from existing shards."""
    import numpy as np

    import zhinao
    from zhinao.storage import open_store

    # The venv's editable install can answer imports a tree lacks, so tell the trees apart by file.
    streaming = (Path(zhinao.__file__).parent / "data" / "token_stream.py").exists()
    if streaming:  # imports first, outside the timing, on both sides
        from zhinao.artifacts import StageOutput
        from zhinao.config.stream import TokenStreamParams
        from zhinao.data.token_stream import TokenStream
    else:
        from zhinao.data.packing import batch_indices
        from zhinao.stages.pretrain import load_tokens

    began = time.perf_counter()
    store = open_store(f"file://{tokens}")
    if streaming:
        stream = TokenStream(
            StageOutput(store), Path(work) / "cache", seed=1, rank=0, world_size=1, params=TokenStreamParams()
        )
        batch = stream.take(MICRO_BATCH)
    else:
        data = load_tokens(store, Path(work) / "cache")
        idx = batch_indices(
            n_sequences=len(data),
            step=0,
            micro_step=0,
            rank=0,
            world_size=1,
            micro_batch=MICRO_BATCH,
            grad_accum=1,
            seed=1,
        )
        batch = data[idx]
    assert np.asarray(batch).shape == (MICRO_BATCH, SEQ_LEN)
    return {"seconds": time.perf_counter() - began, "peak_rss_mb": max_rss_mb()}


def child_tokenize_ours(corpus: str, tokenizer: str, work: str) -> dict:
    from zhinao.artifacts import StageOutput
    from zhinao.config.stream import TokenStreamParams
    from zhinao.data.tokenize_shards import merge_parts, tokenize_share
    from zhinao.storage import open_store
    from zhinao.tokenizer import load

    tok = load(tokenizer)
    cpu, wall = time.process_time(), time.perf_counter()
    out = StageOutput.at(f"file://{work}/ours")
    part = tokenize_share(
        open_store(f"file://{corpus}"), tok, out, seq_len=SEQ_LEN, params=TokenStreamParams(), rank=0, world_size=1
    )
    merge_parts(out, world_size=1, where=corpus)
    return {
        "cpu_seconds": time.process_time() - cpu,
        "seconds": time.perf_counter() - wall,
        "tokens": part.sequences * SEQ_LEN,
        "peak_rss_mb": max_rss_mb(),
    }


def child_tokenize_hf(corpus: str, tokenizer: str, work: str) -> dict:
    import datasets

    from zhinao.tokenizer import load

    tok = load(tokenizer)
    cpu, wall = time.process_time(), time.perf_counter()
    ds = datasets.load_dataset("json", data_files=sorted(str(p) for p in Path(corpus).glob("*.jsonl")), cache_dir=work)
    mapped = ds["train"].map(
        lambda b: tok(b["text"], add_special_tokens=False), batched=True, remove_columns=["text", "source"]
    )
    tokens = sum(len(ids) for ids in mapped.with_format("numpy")["input_ids"])
    return {
        "cpu_seconds": time.process_time() - cpu,
        "seconds": time.perf_counter() - wall,
        "tokens": int(tokens),
        "peak_rss_mb": max_rss_mb(),
    }


def child_litdata(corpus: str, tokenizer: str, work: str) -> dict:
    """litdata's writer and reader on the same corpus: optimize into chunks, then stream from them."""
    from functools import partial

    import numpy as np
    from litdata import StreamingDataset, TokensLoader, optimize

    from zhinao.tokenizer import load

    tok = load(tokenizer)
    files = sorted(str(p) for p in Path(corpus).glob("*.jsonl"))
    cpu, wall = time.process_time(), time.perf_counter()
    optimize(
        fn=partial(_litdata_tokenize, tok=tok),
        inputs=files,
        output_dir=f"{work}/chunks",
        chunk_bytes="32MB",
        item_loader=TokensLoader(),
        num_workers=1,
    )
    write = {"cpu_seconds": time.process_time() - cpu, "seconds": time.perf_counter() - wall}
    began = time.perf_counter()
    ds = StreamingDataset(
        f"{work}/chunks", item_loader=TokensLoader(block_size=SEQ_LEN), shuffle=True, cache_dir=f"{work}/cache"
    )
    first = np.stack([np.asarray(ds[i]) for i in range(MICRO_BATCH)])
    first_batch = time.perf_counter() - began
    assert first.shape == (MICRO_BATCH, SEQ_LEN)
    return {"write": write, "first_batch_seconds": first_batch, "sequences": len(ds), "peak_rss_mb": max_rss_mb()}


def _litdata_tokenize(path: str, *, tok):
    import numpy as np

    eod = tok.convert_tokens_to_ids("<eod>")
    with open(path) as f:
        for line in f:
            ids = tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
            yield np.asarray([*ids, eod], dtype=np.uint32)


CHILDREN = {
    "pretrain": child_pretrain,
    "pretrain_tokens": child_pretrain_tokens,
    "first_batch": child_first_batch,
    "tokenize_ours": child_tokenize_ours,
    "tokenize_hf": child_tokenize_hf,
    "litdata": child_litdata,
}


# -- the run -------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, *rest = sys.argv[2:]
        fn = CHILDREN[name]
        print(json.dumps(fn(*[int(a) if a.isdigit() else a for a in rest])))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--small-mb", type=int, default=20)
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--baseline-ref", default=BASELINE)
    ap.add_argument("--ref", default="HEAD", help="the commit measured as ours")
    ap.add_argument("--sides", default="baseline,ours", help="which sides of the RSS comparison to run")
    ap.add_argument("--litdata", default=None, help="a directory litdata is pip-installed in (--target)")
    ap.add_argument("--workdir", default=None, help="where corpora and outputs go (default: a temp dir)")
    ap.add_argument("--rss-only", action="store_true", help="only the peak-RSS comparison (no tokenize/litdata)")
    ap.add_argument("--results", default=str(RESULTS), help="where the JSON results go")
    args = ap.parse_args()

    sys.path.insert(0, str(HERE))
    from train_throughput import corpus, machine

    from zhinao.tokenizer import to_transformers, train_bpe

    root = Path(args.workdir or tempfile.mkdtemp(prefix="token-stream-"))
    texts = corpus()
    tokenizer = root / "tokenizer"
    to_transformers(train_bpe(texts, vocab_size=4096)).save_pretrained(tokenizer)
    # Both sides run from a snapshot of their commit, so edits to the work tree cannot leak into a run.
    trees = {}
    sides = args.sides.split(",")
    for side, ref in (("baseline", args.baseline_ref), ("ours", args.ref)):
        tree = root / f"{side}-tree"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        trees[side] = f"{tree}:{tree / 'operator'}"

    sizes = [args.small_mb, args.small_mb * args.factor]
    result: dict = {"date": date.today().isoformat(), "machine": machine(), "sizes_mb": sizes, "seq_len": SEQ_LEN}
    for mb in sizes:
        corpus_dir = write_corpus(texts, root / f"corpus-{mb}", mb)
        for side, path in trees.items():
            if side not in sides:
                continue
            work = root / f"{side}-{mb}"
            run = child(["pretrain", str(corpus_dir), str(tokenizer), str(work), str(args.steps)], pythonpath=path)
            first = child(["first_batch", str(work / "out"), str(root / f"first-{side}-{mb}")], pythonpath=path)
            result[f"{side}_{mb}mb"] = {"pretrain": run, "first_batch": first}
            print(side, mb, "MB:", run, first, flush=True)
    for side in sides:
        a, b = (result[f"{side}_{mb}mb"]["pretrain"]["peak_rss_mb"] for mb in sizes)
        result[f"{side}_rss_growth"] = b / a
    result["load_average"] = os.getloadavg()
    if not args.rss_only:
        tokenize_and_litdata(args, result, root, tokenizer, trees, sizes[0])
    Path(args.results).parent.mkdir(exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def tokenize_and_litdata(args, result: dict, root: Path, tokenizer: Path, trees: dict, small_mb: int) -> None:
    """Tokenization throughput (ours vs datasets.map) and litdata, on the smaller corpus."""
    small = root / f"corpus-{small_mb}"
    result["tokenize_ours"] = child(
        ["tokenize_ours", str(small), str(tokenizer), str(root / "tok-ours")], pythonpath=trees["ours"]
    )
    result["tokenize_hf"] = child(
        ["tokenize_hf", str(small), str(tokenizer), str(root / "tok-hf")], pythonpath=trees["ours"]
    )
    if args.litdata:
        result["litdata"] = child(
            ["litdata", str(small), str(tokenizer), str(root / "litdata")], pythonpath=f"{trees['ours']}:{args.litdata}"
        )
    for side in ("tokenize_ours", "tokenize_hf"):
        r = result[side]
        r["mb_per_cpu_second"] = small_mb / r["cpu_seconds"]
    result["tokenize_ratio_per_cpu"] = (
        result["tokenize_ours"]["mb_per_cpu_second"] / result["tokenize_hf"]["mb_per_cpu_second"]
    )


if __name__ == "__main__":
    main()
