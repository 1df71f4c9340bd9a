"""Worker processes that run one task on chunks of rows, with this process as the fallback.

``CsvFile.rows(workers=N)`` validates cells here while the calling process
reads the file and writes to the database. The workers may fail to start
(no POSIX semaphores, no permission to start a process) or die (killed for
memory). The calling process then checks the chunks not yet done itself,
so the import goes on, more slowly, with the same result.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from messagehub.engine.workers import die_with_parent

log = logging.getLogger("messagehub.contacts")


class PendingChunk:
    """A chunk submitted to the pool: its arguments, and the future of a worker's result or None."""

    def __init__(self, arguments: tuple, future: Future | None) -> None:
        self.arguments = arguments
        self.future = future


class ValidationPool:
    """Up to ``workers`` processes that run ``task`` on submitted chunks; close it when done."""

    def __init__(self, workers: int, task: Callable[..., list]) -> None:
        self._task = task
        self._executor: ProcessPoolExecutor | None = None
        try:
            # spawn, not fork: the web app calls this from a thread, and a
            # forked child would inherit locks that other threads hold.
            context = multiprocessing.get_context("spawn")
            # A worker waits on a queue whose write end it also has open, so it
            # would outlive a killed importer without die_with_parent.
            self._executor = ProcessPoolExecutor(
                max_workers=workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
            )
        except OSError as error:
            self._fall_back(error)

    def submit(self, *arguments: object) -> PendingChunk:
        """Send ``task(*arguments)`` to a worker, or run it here once the workers have failed."""
        if self._executor is not None:
            try:
                return PendingChunk(arguments, self._executor.submit(self._task, *arguments))
            except (BrokenProcessPool, OSError) as error:
                self._fall_back(error)

        return PendingChunk(arguments, None)

    def result(self, chunk: PendingChunk) -> list:
        """Return the task's result for ``chunk``, computing it here when no worker did.

        :raises Exception: whatever the task raised, in a worker or here.
        """
        if chunk.future is not None:
            try:
                return chunk.future.result()
            except BrokenProcessPool as error:
                self._fall_back(error)

        return self._task(*chunk.arguments)

    def close(self) -> None:
        """Stop the workers; chunks not yet started are dropped."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _fall_back(self, error: Exception) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            log.warning("validation workers failed, validating in the importing process: %s", error)
        elif not isinstance(error, BrokenProcessPool):
            log.warning("validation workers could not start, validating in the importing process: %s", error)
