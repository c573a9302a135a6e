"""BackgroundJob: one job in flight; its result or its error reaches the thread that waits."""

import threading

import pytest

from zhinao.training.background import BackgroundJob


def test_the_result_comes_back_and_a_second_job_must_wait_for_the_first():
    job, release = BackgroundJob("t"), threading.Event()
    job.start(lambda: release.wait(5) and "done")
    assert job.pending
    with pytest.raises(RuntimeError, match="still in flight"):
        job.start(lambda: None)
    release.set()
    assert job.wait() == "done"
    assert not job.pending and job.wait() is None  # nothing in flight: returns at once


def test_the_error_of_a_job_is_raised_by_wait_once():
    job = BackgroundJob("t")
    job.start(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        job.wait()
    assert job.wait() is None
    job.start(lambda: 7)  # the failed job no longer counts as in flight
    assert job.wait() == 7
