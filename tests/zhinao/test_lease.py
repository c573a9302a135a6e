"""The single-writer lease of a stage output, on the real S3 server (conditional writes) and on a
local directory (a lock file): one holder at a time, named to the others; expiry; takeover."""

import threading

import pytest

from zhinao.lease import LEASE_KEY, Lease, LeaseHeld, LeaseLost, hold
from zhinao.storage import FileStore


@pytest.fixture(params=["s3", "file"])
def store(request, tmp_path):
    if request.param == "file":
        return FileStore(tmp_path / "out")
    return request.getfixturevalue("s3_store")


def test_a_second_writer_fails_naming_the_holder(store):
    Lease(store, "run A").acquire()
    with pytest.raises(LeaseHeld, match="the output is being written by run A"):
        Lease(store, "run B").acquire()
    Lease(store, "run A").acquire()  # the same writer (a restarted container) takes it back


def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it(store):
    now = [1000.0]
    a = Lease(store, "run A", ttl=60, clock=lambda: now[0])
    a.acquire()
    now[0] += 61
    Lease(store, "run B", ttl=60, clock=lambda: now[0]).acquire()
    with pytest.raises(LeaseLost, match="taken over"):
        a.renew()


def test_of_many_writers_starting_together_exactly_one_wins(store):
    barrier, won, lost = threading.Barrier(6), [], []

    def contend(i: int) -> None:
        barrier.wait()
        try:
            Lease(store, f"run {i}").acquire()
            won.append(i)
        except LeaseHeld:
            lost.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 5


def test_hold_renews_and_releases(store):
    with hold(store, "run A", ttl=0.6) as lease:
        first = lease.version
        threading.Event().wait(0.5)  # a renewal every ttl/3
        assert lease.version != first
        with pytest.raises(LeaseHeld):
            Lease(store, "run B").acquire()
    assert not store.exists(LEASE_KEY)
    Lease(store, "run B").acquire()
