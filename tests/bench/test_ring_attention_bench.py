"""bench/ring_attention.py: the 32K GPU check's code path at toy size on CPU, and the baseline it
compares against loads from git."""

import importlib.util
from pathlib import Path

from transformers import Qwen2ForCausalLM

SCRIPT = Path(__file__).parents[2] / "bench" / "ring_attention.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("ring_attention_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_long_context_trains_and_reports_tokens_per_second_on_cpu_at_toy_size():
    bench = load_bench()
    result = bench.long_context_check(dry_run=True)
    assert result["seq_len"] == 64 and result["tokens_per_second"] > 0 and result["peak_gib"] is None
    assert result["params"] == Qwen2ForCausalLM(bench.tiny_config()).num_parameters()


def test_baseline_is_the_matmul_ring_from_git(tmp_path):
    baseline = load_bench().baseline_module(tmp_path)
    assert "plain matmuls" in baseline.__doc__ and hasattr(baseline, "ring_attention")
