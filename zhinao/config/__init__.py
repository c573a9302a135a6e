"""Typed, documented hyperparameters of every stage.

These modules import nothing heavier than pydantic so that the operator image (no torch)
can validate pipeline specs with exactly the models the trainer uses.
"""
