"""Packing within a source and the deterministic, resumable sampler."""

import numpy as np

from zhinao.data.packing import batch_indices, pack_source


def test_documents_are_joined_with_eod_and_cut_to_length():
    seqs = pack_source([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=4, eod_id=0)
    assert seqs.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert pack_source([[1]], seq_len=4, eod_id=0).shape == (0, 4)  # an incomplete tail is dropped


def kwargs(**over):
    base = dict(n_sequences=50, step=0, micro_step=0, rank=0, world_size=2, micro_batch=3, grad_accum=2, seed=7)
    return {**base, **over}


def test_one_epoch_visits_every_sequence_once_across_ranks_and_micro_steps():
    seen = []
    for step in range(4):  # 4 steps x 2 ranks x 2 micro x 3 = 48 of 50
        for micro in range(2):
            for rank in range(2):
                seen += batch_indices(**kwargs(step=step, micro_step=micro, rank=rank)).tolist()
    assert len(seen) == len(set(seen)) == 48


def test_the_sampler_is_a_pure_function_of_position():
    a = batch_indices(**kwargs(step=9, rank=1))
    b = batch_indices(**kwargs(step=9, rank=1))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, batch_indices(**kwargs(step=9, rank=1, seed=8)))


def test_epochs_reshuffle():
    first = [batch_indices(**kwargs(n_sequences=6, world_size=1, grad_accum=1, step=s)).tolist() for s in range(2)]
    second = [batch_indices(**kwargs(n_sequences=6, world_size=1, grad_accum=1, step=s)).tolist() for s in range(2, 4)]
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(6))
    assert first != second
