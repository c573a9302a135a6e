"""The operator: reconciles TrainingPipelines and Ablations into PyTorchJobs (kopf).

Pure decisions: `plan_pipeline.py`, `plan_ablation.py`, `pipeline_status.py` (no I/O, no
kubernetes or kopf imports; table-tested). I/O: `k8s.py` (the only module that calls the API
server), `reconcile.py` (the one skeleton both kinds share), `handlers.py` (kopf triggers),
`metrics.py` (the operator's own metrics) and `operator.py` (start-up).
"""
