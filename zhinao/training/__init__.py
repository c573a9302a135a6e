"""Pieces every training stage shares: optimizer and schedule, the DDP/DeepSpeed engines, the loop."""
