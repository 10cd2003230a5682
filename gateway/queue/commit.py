"""The group commit: sessions that finish DATA together share one trip to the disk.

Each queue-mode session hands its received message here at the end of data
(`GroupCommit.submit`). One batch at a time runs in a thread
(`gateway.queue.spool.commit_all`: each session's commit fsyncs its body,
envelope and folder and renames it into ``active/``, then one fsync of
``active/`` serves the batch); messages that arrive meanwhile wait for the next batch, so the batch
grows with the load and adds no timer. Each session's Deferred fires only when
its own message is on stable storage — its ``250`` — or fails with the
`OSError` that made it not durable (its ``452 4.3.1``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from gateway.queue.writer import SpoolWriter, commit_all

RunBlocking = Callable[..., "defer.Deferred[Any]"]  # (function, *args) run off the reactor


class GroupCommit:
    def __init__(self, run_blocking: RunBlocking) -> None:
        self.run_blocking = run_blocking
        self.waiting: list[tuple[Callable[[], None], SpoolWriter, defer.Deferred[None]]] = []
        self.running = False
        self.batches = 0  # batches committed (and messages in them): for tests and the bench
        self.messages = 0

    def submit(self, commit: Callable[[], None], writer: SpoolWriter) -> defer.Deferred[None]:
        """Run `commit` (`writer`'s `SpoolWriter.commit`) in the next batch; fires once durable."""
        done: defer.Deferred[None] = defer.Deferred()
        writer.grouped = True
        self.waiting.append((commit, writer, done))
        if not self.running:
            self._next()
        return done

    def _next(self) -> None:
        batch, self.waiting = self.waiting, []
        self.running = True
        work = self.run_blocking(commit_all, [(c, w) for c, w, _ in batch])
        work.addBoth(self._finished, batch)

    def _finished(
        self,
        result: list[OSError | None] | Failure,
        batch: list[tuple[Callable[[], None], SpoolWriter, defer.Deferred[None]]],
    ) -> None:
        self.running = False
        self.batches += 1
        self.messages += len(batch)
        if isinstance(result, Failure):  # commit_all itself raised: none of them is durable
            raised = result.value if isinstance(result.value, OSError) else OSError(str(result))
            errors: list[OSError | None] = [raised] * len(batch)
        else:
            errors = result
        if self.waiting:
            self._next()  # the disk goes on with the next batch while these sessions answer
        for (_, _, done), failed in zip(batch, errors, strict=True):
            if failed is None:
                done.callback(None)
            else:
                done.errback(failed)
