"""`make gpu-check`'s CPU dry run: the same script end to end with the tiny model."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_dry_run_trains_and_reports_throughput_mfu_and_memory(tmp_path):
    out = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out)], check=True)
    result = json.loads(out.read_text())
    assert result["model"] == "tiny" and result["steps"] == 3
    assert result["loss_last"] < result["loss_first"]
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1 and result["peak_memory_gb"] > 0
    remax = result["remax"]  # on CPU: the tiny model, the hf engine only (vLLM needs a GPU)
    assert remax["model"] == "tiny" and list(remax["engines"]) == ["hf"]
    hf = remax["engines"]["hf"]
    assert hf["timed_steps"] == 1 and hf["samples_per_second"] > 0 and 0 < hf["generation_share"] < 1


def test_without_a_gpu_the_real_check_says_so():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True)
    assert done.returncode != 0 and "no CUDA device" in done.stderr
