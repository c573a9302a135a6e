"""Pure renderers: (pipeline, stage) -> PyTorchJob; (ablation, step) -> PyTorchJob; ablation ->
its runs' TrainingPipelines. No I/O, no kubernetes/kopf imports.

Only PyTorchJob (kubeflow.org/v1, training-operator v1.9) is rendered. The callers (the controller,
the local runner, the CLI) import `pytorchjob.py` directly, so a Trainer v2 `TrainJob` renderer
beside it would also need them to choose between the two.
"""
