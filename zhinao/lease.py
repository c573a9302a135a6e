"""One writer per stage output: a lease object in the output, taken and renewed with conditional
writes (S3 If-None-Match / If-Match; a lock file locally), so that two runs of one spec cannot both
write -- or resume from -- the same output.

The lease names its holder and expires `ttl` seconds after its last renewal: a writer that died
without releasing it blocks others only until then. The same holder (a restarted container of
the same job) takes its own lease back at once.
"""

import _thread
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from zhinao.artifacts import LEASE
from zhinao.storage import ObjectNotFound, ObjectStore

log = logging.getLogger("zhinao.lease")
LEASE_KEY = LEASE
DEFAULT_TTL_SECONDS = 120.0
ENV_WRITER = "ZHINAO_WRITER"
"""Who writes: the local runner sets one per run; on a cluster the master pod's name is used."""


class LeaseHeld(RuntimeError):
    """Another writer holds the output."""


class LeaseLost(RuntimeError):
    """Our lease was taken over (it expired while we were not renewing it)."""


def writer_id() -> str:
    return os.environ.get(ENV_WRITER) or socket.gethostname()


class Lease:
    def __init__(
        self,
        store: ObjectStore,
        holder: str,
        *,
        ttl: float = DEFAULT_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ):
        self.store, self.holder, self.ttl, self.clock = store, holder, ttl, clock
        self.version: str | None = None

    def _body(self) -> bytes:
        now = self.clock()
        return json.dumps({"holder": self.holder, "renewed": now, "expires": now + self.ttl}).encode()

    def acquire(self) -> None:
        """Take the lease, or raise LeaseHeld naming the holder."""
        while True:
            try:
                raw, version = self.store.get_versioned(LEASE_KEY)
            except ObjectNotFound:
                raw, version = None, None
            if raw is not None:
                try:
                    current = json.loads(raw)
                    holder, expires = str(current["holder"]), float(current["expires"])
                except (ValueError, KeyError, TypeError):
                    holder, expires = "(unreadable lease)", 0.0  # a torn or foreign object: stale
                if holder != self.holder and expires > self.clock():
                    raise LeaseHeld(
                        f"{self.store.url(LEASE_KEY)}: the output is being written by {holder} "
                        f"(lease valid for {expires - self.clock():.0f}s more); wait for that run to end, "
                        "stop it, or give this stage another output"
                    )
            taken = self.store.put_if(LEASE_KEY, self._body(), version=version)
            if taken is not None:
                self.version = taken
                return
            # Another writer changed the lease between our read and write: look again.

    def renew(self) -> None:
        taken = self.store.put_if(LEASE_KEY, self._body(), version=self.version)
        if taken is None:
            raise LeaseLost(f"{self.store.url(LEASE_KEY)}: lease of {self.holder} was taken over by another writer")
        self.version = taken

    def release(self) -> None:
        """Remove the lease if it is still ours."""
        try:
            raw, version = self.store.get_versioned(LEASE_KEY)
        except ObjectNotFound:
            return
        if version == self.version:
            self.store.delete(LEASE_KEY)


@contextmanager
def hold(store: ObjectStore, holder: str, *, ttl: float = DEFAULT_TTL_SECONDS) -> Iterator[Lease]:
    """Hold the output's lease for the block: renewed every ttl/3 seconds, released at the end. A
    lost lease interrupts the main thread: another writer owns the output now."""
    lease = Lease(store, holder, ttl=ttl)
    lease.acquire()
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(ttl / 3):
            try:
                lease.renew()
            except LeaseLost as exc:
                log.error("%s; stopping", exc)
                _thread.interrupt_main()
                return
            except Exception as exc:  # a storage hiccup: the next renewal may succeed
                log.warning("cannot renew the lease on %s: %s", store.uri, exc)

    thread = threading.Thread(target=keep, name="zhinao-lease", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join()
        lease.release()
