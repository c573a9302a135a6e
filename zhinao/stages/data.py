"""Data stage: the pretraining data processing of report section 2.1, sharded over a PyTorchJob's ranks.

inputs:  corpus  (*.jsonl, *.ndjson or *.json documents, optionally .gz/.zst/.bz2, or *.parquet, under a URI prefix)
output:  <output>/docs/part-RRRRR-NNNNN.jsonl     cleaned, deduplicated, mixed documents (text, source, ...)
         <output>/rejects/part-RRRRR-NNNNN.jsonl  every dropped line or document, with step and reason
         <output>/report/retention.{json,md,png}  the retention cascade (report Fig. 1)
         <output>/summary.json

Every rank reads its share of the input files; the cross-shard steps meet through object storage
(`_work/`), with gloo barriers when the job provides MASTER_ADDR and object-store barriers otherwise.
"""

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


def _init_gloo(dist: DistEnv, timeout_s: float) -> bool:
    """A CPU process group for barriers, when torchrun/PyTorchJob gave us a rendezvous."""
    if dist.world_size == 1 or "MASTER_ADDR" not in os.environ:
        return False
    try:
        import torch.distributed as td
    except ImportError:
        return False
    if td.is_initialized():
        return False
    td.init_process_group("gloo", rank=dist.rank, world_size=dist.world_size, timeout=timedelta(seconds=timeout_s))
    return True


def run(rt: StageRuntime, params: DataParams) -> None:
    if "corpus" not in rt.inputs:
        raise SystemExit("data stage needs inputs.corpus (a URI prefix with JSONL or Parquet documents)")
    dist = DistEnv.from_env()
    owns_group = _init_gloo(dist, params.output.barrier_timeout_s)
    finished = False
    try:
        output = open_store(rt.output)
        report = run_data_processing(
            params, corpus=open_store(rt.inputs["corpus"]), output=output, dist=dist, run_id=default_run_id()
        )
        finished = True
    except EmptyCorpus as exc:  # a wrong input, not a bug: one line, no traceback
        raise SystemExit(f"data stage: {exc}") from None
    finally:
        if owns_group:
            from zhinao.training.process_group import leave_process_group

            leave_process_group(barrier=finished)  # after a failure the other ranks may never arrive
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
