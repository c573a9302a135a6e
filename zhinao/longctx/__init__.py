"""Long-context extension (report section 3.1.3): RoPE base change, long-document packing and
synthetic long QA data, ring-attention sequence parallelism, needle-in-a-haystack evaluation."""
