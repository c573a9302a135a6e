"""zhinao: the training library behind zhinao-k8s (data, tokenizer, pretraining, alignment)."""

__version__ = "0.1.0"
