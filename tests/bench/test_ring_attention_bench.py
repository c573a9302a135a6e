"""bench/ring_attention.py: the 32K GPU check's code path at toy size on CPU, and the baseline it
compares against loads from git."""

from scripts import load_script
from transformers import Qwen2ForCausalLM


def test_gpu_long_context_trains_and_reports_tokens_per_second_on_cpu_at_toy_size():
    bench = load_script("bench/ring_attention.py")
    result = bench.long_context_check(dry_run=True)
    assert result["seq_len"] == 64 and result["tokens_per_second"] > 0 and result["peak_gib"] is None
    assert result["params"] == Qwen2ForCausalLM(bench.tiny_config()).num_parameters()


def test_baseline_is_the_matmul_ring_from_git(tmp_path):
    baseline = load_script("bench/ring_attention.py").baseline_module(tmp_path)
    assert "plain matmuls" in baseline.__doc__ and hasattr(baseline, "ring_attention")
