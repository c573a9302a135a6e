"""Ownership of documents by rank, and exchange through an object store between two threads."""

import threading

import numpy as np

from zhinao.data.exchange import Comm, Sharding
from zhinao.data.io import make_gid
from zhinao.storage import open_store


def test_file_sharding_and_line_striping():
    s = Sharding(n_files=5, world_size=2)
    assert s.by_file and list(s.files_of(0)) == [0, 1, 2] and list(s.files_of(1)) == [3, 4]
    gids = np.array([make_gid(f, 7) for f in range(5)], dtype=np.uint64)
    assert s.owner(gids).tolist() == [0, 0, 0, 1, 1]
    striped = Sharding(n_files=1, world_size=3)
    assert not striped.by_file and list(striped.files_of(2)) == [0]
    assert [striped.owns_line(r, 4) for r in range(3)] == [False, True, False]
    assert striped.owner(np.array([make_gid(0, 4)], dtype=np.uint64)).tolist() == [1]


def test_exchange_route_and_barrier_between_threads(tmp_path):
    store = open_store(f"file://{tmp_path}/work")
    results = {}

    def rank(r):
        comm = Comm(store, r, 2, timeout_s=30)
        got = comm.exchange("t1", [np.array([r * 10 + d]) for d in range(2)])
        routed = comm.route("t2", np.arange(6) + 100 * r, np.arange(6) % 2)
        comm.barrier("end")
        results[r] = ([g.tolist() for g in got], sorted(routed.tolist()))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert results[0] == ([[0], [10]], [0, 2, 4, 100, 102, 104])
    assert results[1] == ([[1], [11]], [1, 3, 5, 101, 103, 105])
