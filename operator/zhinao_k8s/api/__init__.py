"""Versioned API: the TrainingPipeline and Ablation specs, their status models, the CRDs generated
from them. Pure: no I/O, no kubernetes or kopf imports."""
