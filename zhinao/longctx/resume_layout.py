"""Whether a long-context checkpoint resumes with this run's ranks (pure: the checkpoint's meta in).

A run of W ranks is W / S data-parallel groups of S = sequenceParallel ranks; each group reads one
data-parallel stream (zhinao.data.stream_order with world size W / S) and its ranks split every
sequence. So:

* S changes, W / S does not: the same streams, regrouped. The data position applies as saved, the
  model and optimizer state reshards (FSDP2, DCP) or is replicated (DDP), and the ring computes the
  same attention as whole sequences do: the run resumes exactly.
* W / S changes: each group's share of the data depends on their number. With `stream.elastic` the
  position is a global sample count, which any number of groups continues; without, refused.
"""


class LayoutMismatch(ValueError):
    """A checkpoint's data-parallel layout that this run cannot continue."""


def describe(world_size: int, sequence_parallel: int) -> str:
    return (
        f"{world_size} ranks ({world_size // sequence_parallel} data-parallel x {sequence_parallel} sequence-parallel)"
    )


def resume_layout(meta: dict, *, world_size: int, sequence_parallel: int, elastic: bool) -> str | None:
    """None when the checkpoint in `meta` (a resumed run's loop meta; {} on a fresh start) was written
    with this layout, a line saying how it continues when the layout changed and it resumes exactly,
    LayoutMismatch with one line saying what to do when it cannot."""
    if "step" not in meta:
        return None
    saved_world, saved_sp = meta.get("world_size", world_size), meta.get("sequence_parallel", 1)
    if (saved_world, saved_sp) == (world_size, sequence_parallel):
        return None
    saved_dp, dp = saved_world // saved_sp, world_size // sequence_parallel
    was, now = describe(saved_world, saved_sp), describe(world_size, sequence_parallel)
    if saved_dp == dp:
        return f"resuming step {meta['step']} of {was} with {now}: the same data-parallel streams ({dp}), regrouped"
    if elastic:
        return f"resuming step {meta['step']} of {was} with {now}: the elastic stream continues where it stopped"
    raise LayoutMismatch(
        f"longctx: the checkpoint of step {meta['step']} was written by {was} and this run has {now}; each "
        f"data-parallel group's share of the data depends on their number, so another one would repeat and skip "
        f"sequences. Resume with {saved_dp} data-parallel groups ({saved_dp * sequence_parallel} ranks at "
        f"sequenceParallel {sequence_parallel}), or start a new run (a fresh output prefix) with stream.elastic, "
        "whose positions resume at any world size"
    )
