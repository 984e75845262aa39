"""A pool of runners: one interpreter per worker, a bounded wait, never an unbounded queue."""

from __future__ import annotations

import contextlib
import queue
import threading


#: Most requests waiting by default: each holds one of the 40 threads Starlette runs blocking calls in.
MAX_DEFAULT_WAITING = 24


class Overloaded(Exception):
    """Every runner is busy and the request waited its limit (or too many are waiting)."""


class RunnerPool:
    """``workers`` runners of one file, each serving ``parallel`` requests at once (a batching
    runner: ``InterpreterRunner(batching=True)``); ``acquire`` lends a runner for a request, one of
    its slots.

    Args:
        make_runner: builds one runner (``InterpreterRunner(path)``).
        workers: runners.
        wait_seconds: longest a request waits for a free slot before ``Overloaded``.
        max_waiting: requests allowed to wait at once; one more is refused at once (default: four
            per slot, at most ``MAX_DEFAULT_WAITING``).
        parallel: requests each runner serves at once (default: as many as its engine decodes in
            one call, ``max_rows`` of a batching runner, else 1).
    """

    def __init__(self, make_runner, workers: int, wait_seconds: float, max_waiting: int | None = None,
                 parallel: int | None = None):
        self.runners = [make_runner() for _ in range(workers)]
        self.parallel = parallel or getattr(getattr(self.runners[0], "engine", None), "max_rows", 1)
        for runner in self.runners:  # every slot's caches made now, not as the first requests arrive together
            reserve = getattr(getattr(runner, "engine", None), "reserve", None)
            if reserve is not None:
                reserve(self.parallel)
        self._free: queue.Queue = queue.Queue()
        for _ in range(self.parallel):  # one slot of each runner, then the next: requests spread over the runners
            for runner in self.runners:
                self._free.put(runner)
        self.wait_seconds = wait_seconds
        # a waiting request holds one of the server's 40 worker threads: leave some for running ones
        self.max_waiting = max_waiting or min(4 * self.slots, MAX_DEFAULT_WAITING)
        self._waiting = 0
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        """Requests waiting for a free runner now."""
        return self._waiting

    @property
    def slots(self) -> int:
        """Requests served at once."""
        return len(self.runners) * self.parallel

    @property
    def busy(self) -> int:
        return self.slots - self._free.qsize()

    def take(self):
        """A runner with a free slot (blocks up to ``wait_seconds``); give it back with ``give_back``."""
        with self._lock:
            if self._free.empty() and self._waiting >= self.max_waiting:
                raise Overloaded(f"{self._waiting} requests are already waiting")
            self._waiting += 1
        try:
            runner = self._free.get(timeout=self.wait_seconds)
        except queue.Empty:
            raise Overloaded(f"no runner was free within {self.wait_seconds:g} s") from None
        finally:
            with self._lock:
                self._waiting -= 1
        return runner

    def give_back(self, runner) -> None:
        self._free.put(runner)

    @contextlib.contextmanager
    def acquire(self):
        runner = self.take()
        try:
            yield runner
        finally:
            self.give_back(runner)
