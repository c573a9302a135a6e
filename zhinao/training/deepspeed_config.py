"""The DeepSpeed config of a ZeRO stage: bf16, overlapped communication, sized buckets."""

BUCKET = 500_000_000
"""Elements per reduce / all-gather bucket (DeepSpeed's own default is 5e8): large enough to keep
NCCL at bandwidth, small enough that two in flight stay a few GB in bf16."""
PERSISTENCE_THRESHOLD = 1_000_000
"""ZeRO-3: parameters of fewer elements stay whole on every rank (norms, biases): gathering them
costs more than it saves."""


def deepspeed_config(*, zero_stage: int, micro_batch: int, grad_accum: int, grad_clip: float, bf16: bool) -> dict:
    zero: dict = {
        "stage": zero_stage,
        # Gradient reduction overlaps the rest of backward; gradients are copied into one contiguous
        # buffer as they are produced, so reduction does not fragment memory.
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": BUCKET,
    }
    if zero_stage < 3:
        zero["allgather_bucket_size"] = BUCKET
    else:
        zero.update(
            {
                "stage3_prefetch_bucket_size": BUCKET,
                "stage3_param_persistence_threshold": PERSISTENCE_THRESHOLD,
                "stage3_max_live_parameters": 1_000_000_000,
                "stage3_max_reuse_distance": 1_000_000_000,
                # Export gathers parameter by parameter through GatheredParameters, not a 16-bit copy on save.
                "stage3_gather_16bit_weights_on_model_save": False,
            }
        )
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
