"""One job at a time on a background thread: the checkpoint write, upload and commit that training
does not wait for.

The thread is a daemon: a process that exits without waiting for it (killed, or failing where
no one waits) does not hang on an upload whose collectives can no longer complete, and the
checkpoint it was writing stays uncommitted (`latest` keeps naming the previous one).
"""

import threading
from collections.abc import Callable
from typing import Any


class BackgroundJob:
    def __init__(self, name: str):
        self.name = name
        self._thread: threading.Thread | None = None
        self._outcome: tuple[Any, BaseException | None] = (None, None)

    @property
    def pending(self) -> bool:
        return self._thread is not None

    def start(self, job: Callable[[], Any]) -> None:
        """Run `job` in the background; the previous job must have been waited for."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: a job is still in flight; wait() for it first")

        def run() -> None:
            try:
                self._outcome = (job(), None)
            except BaseException as exc:  # handed to the thread that waits, which raises it
                self._outcome = (None, exc)

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()

    def wait(self) -> Any:
        """Block until the job in flight (if any) ends; returns its result or raises its error."""
        if self._thread is None:
            return None
        self._thread.join()
        self._thread = None
        (result, error), self._outcome = self._outcome, (None, None)
        if error is not None:
            raise error
        return result
