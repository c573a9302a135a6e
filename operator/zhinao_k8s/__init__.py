"""zhinao_k8s: the TrainingPipeline and Ablation specs, PyTorchJob rendering, local runner, operator and CLI.

Words with one meaning each in this package:
- pipeline: a TrainingPipeline (stages run one after another, each as a PyTorchJob);
- job: a PyTorchJob; step: an Ablation's prepare or evaluate job; run: one recipe x seed of an
  Ablation, itself a TrainingPipeline;
- report: an Ablation's report (report.md and report.json, `status.report`, `ablation report`).
  The 360Zhinao paper is "the technical report"; a stage's `report/` folder belongs to its output
  layout; the local demo's REPORT.md is the run overview.
- plan: the controller's pure decision (`plan_pipeline`, `plan_ablation`); an Ablation's runs are
  expanded (`expand_runs`), not planned.
"""

__version__ = "0.1.0"
