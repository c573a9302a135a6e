"""Rollout engines: what the online RL loop generates responses with (see engine.py)."""
