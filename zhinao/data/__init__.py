"""Data: the pretraining data pipeline (report section 2.1) and token packing."""
