"""zhinao_k8s: the pipeline spec, PyTorchJob rendering, local runner, operator and CLI of zhinao-k8s."""

__version__ = "0.1.0"
