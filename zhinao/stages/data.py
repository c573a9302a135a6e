"""Data stage: the pretraining data processing of report section 2.1, sharded over a PyTorchJob's ranks.

inputs:  corpus  (*.jsonl, *.ndjson or *.json documents, optionally .gz/.zst/.bz2, or *.parquet, under a URI prefix)
output:  <output>/docs/part-RRRRR-NNNNN.jsonl     cleaned, deduplicated, mixed documents (text, source, ...)
         <output>/rejects/part-RRRRR-NNNNN.jsonl  every dropped line or document, with step and reason
         <output>/report/retention.{json,md,png}  the retention cascade (report Fig. 1)
         <output>/summary.json

Every rank reads its share of the input files; the cross-shard steps meet through object storage
(`_work/`), with gloo barriers when the job provides MASTER_ADDR and object-store barriers otherwise.
"""

import contextlib
import importlib.util
import logging
import os
from datetime import timedelta

from zhinao.artifacts import StageOutput
from zhinao.config.data import DataParams
from zhinao.config.runtime import StageRuntime
from zhinao.data.processing import EmptyCorpus, default_run_id, run_data_processing
from zhinao.distributed import DistEnv
from zhinao.storage import open_store

Params = DataParams
log = logging.getLogger(__name__)


def _cpu_group(dist: DistEnv, timeout_s: float):
    """A CPU process group for barriers when torchrun/PyTorchJob gave a rendezvous and torch is
    installed (the data stage runs without it: its exchange and barriers also go through storage)."""
    if "MASTER_ADDR" not in os.environ or importlib.util.find_spec("torch") is None:
        return contextlib.nullcontext(False)
    from zhinao.training.process_group import cpu_group

    return cpu_group(dist, timedelta(seconds=timeout_s))


def run(rt: StageRuntime, params: DataParams) -> None:
    if "corpus" not in rt.inputs:
        raise SystemExit("data stage needs inputs.corpus (a URI prefix with JSONL or Parquet documents)")
    dist = DistEnv.from_env()
    with _cpu_group(dist, params.output.barrier_timeout_s):
        try:
            output = open_store(rt.output)
            report = run_data_processing(
                params, corpus=open_store(rt.inputs["corpus"]), output=output, dist=dist, run_id=default_run_id()
            )
        except EmptyCorpus as exc:  # a wrong input, not a bug: one line, no traceback
            raise SystemExit(f"data stage: {exc}") from None
    if report is not None:
        summary = {
            "docs_written": report["docs_written"],
            "docs": output.url("docs"),
            "rejects": output.url("rejects"),
            "report": StageOutput(output).report_url("retention.md"),
            "retention": [
                {k: r[k] for k in ("step", "docs_in", "docs_out", "bytes_in", "bytes_out")} for r in report["steps"]
            ],
        }
        StageOutput(output).write_summary(summary)
