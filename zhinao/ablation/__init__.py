"""The ablation environment of report section 2.6, with the statistics the report leaves out.

prepare   held-out topic split, shared tokenizer, experimental/base mixing at a fixed share (streaming)
mixture   the streaming pieces of the mixing: selection by token budget, interleaving, part files
evaluate  validation curve from the run's metrics log (computed in its loop), the benchmark harness
suite     the built-in synthetic benchmark suite, built from the held-out topics
stats     means, seed std, bootstrap CIs, Welch tests, effect sizes, metric stability/sensitivity
report    markdown + JSON + PNG plots (plots.py) of one ablation
"""
