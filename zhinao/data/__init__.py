"""Data: the pretraining data processing (report section 2.1) and token packing."""
