"""Pure renderers: (pipeline, stage) -> PyTorchJob; (ablation, step) -> PyTorchJob; ablation ->
its runs' TrainingPipelines. No I/O, no kubernetes/kopf imports.

Rendering sits behind this package so a Trainer v2 `TrainJob` renderer can be added beside
`pytorchjob.py` without touching the callers.
"""
