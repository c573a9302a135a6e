"""The ablation environment of report section 2.6, with the statistics the report leaves out.

prepare   held-out topic split, shared tokenizer, experimental/base mixing at a fixed share
evaluate  validation loss on saved checkpoints, the benchmark harness (MC and generative)
suite     the built-in synthetic benchmark suite, built from the held-out topics
stats     means, seed std, bootstrap CIs, Welch tests, effect sizes, metric stability/sensitivity
report    markdown + JSON + PNG plots (plots.py) of one ablation
"""
