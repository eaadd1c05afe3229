"""Dynamic batching: requests wait at most ``max_wait_s`` or until a batch fills.

Each request submits its images as *slots*; one worker thread (the only one
that calls the compiled detector) takes up to ``max_batch`` slots at a time:
as soon as the queue holds ``max_batch`` of them, or when the oldest queued
slot has waited ``max_wait_s``, whichever comes first. A request with more
images than a batch holds spreads over consecutive batches. The worker calls
``process(payloads) -> results`` once per batch; a result that is an
exception fails that slot's request only. The request's
:class:`concurrent.futures.Future` resolves when all its slots have results
(``asyncio.wrap_future`` awaits it from the event loop).

The queue is bounded (``max_queue`` slots): a submit beyond it raises
:class:`Busy` at once (the app answers 503), so a burst cannot grow memory or
latency without limit.

Example:
  >>> b = DynamicBatcher(lambda xs: [x * 2 for x in xs], max_batch=8, max_wait_s=0.005)
  >>> b.submit([1, 2, 3]).result()
  [2, 4, 6]
  >>> b.close()
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from typing import Any, Callable, Sequence

from scaleup_jax.validation import InputError


class Busy(RuntimeError):
  """The queue is full; retry later."""


class Closed(RuntimeError):
  """The batcher has been closed."""


class _Job:
  __slots__ = ('future', 'results', 'remaining', 'error')

  def __init__(self, n: int):
    self.future: concurrent.futures.Future = concurrent.futures.Future()
    self.results: list = [None] * n
    self.remaining = n
    self.error: BaseException | None = None


class DynamicBatcher:
  """Groups submitted payloads into batches for one worker thread.

  Args:
    process: ``(payloads: list) -> list`` of the same length, called on the
      worker thread with at most ``max_batch`` payloads; an item of the result
      that is a ``BaseException`` fails the request that item belongs to, and
      an exception raised by ``process`` fails every request in the batch.
    max_batch: the largest batch (the engine's largest compiled bucket).
    max_wait_s: how long the oldest queued payload may wait for others.
    max_queue: queued payloads beyond which :meth:`submit` raises :class:`Busy`.
    on_batch: optional ``(n, seconds)`` callback after each batch.
  """

  def __init__(self, process: Callable[[list], Sequence[Any]], max_batch: int,
               max_wait_s: float = 0.005, max_queue: int = 4096,
               on_batch: Callable[[int, float], None] | None = None):
    if max_batch < 1 or max_wait_s < 0 or max_queue < 1:
      raise InputError(f'need max_batch >= 1, max_wait_s >= 0, max_queue >= 1; got {max_batch}, '
                       f'{max_wait_s}, {max_queue}')
    self._process = process
    self.max_batch = int(max_batch)
    self.max_wait_s = float(max_wait_s)
    self.max_queue = int(max_queue)
    self._on_batch = on_batch
    self._queue: collections.deque = collections.deque()  # (job, index, payload, enqueued)
    self._cond = threading.Condition()
    self._closed = False
    self.batches = 0
    self._thread = threading.Thread(target=self._run, name='scaleup-batcher', daemon=True)
    self._thread.start()

  def queued(self) -> int:
    """Payloads waiting for a batch."""
    with self._cond:
      return len(self._queue)

  def submit(self, payloads: Sequence[Any]) -> concurrent.futures.Future:
    """Queues ``payloads``; the future resolves to their results, in order.

    Raises:
      Busy: the queue cannot take them now.
      Closed: the batcher is shutting down.
    """
    job = _Job(len(payloads))
    if not payloads:
      job.future.set_result([])
      return job.future
    now = time.monotonic()
    with self._cond:
      if self._closed:
        raise Closed('the service is shutting down')
      if len(self._queue) + len(payloads) > self.max_queue:
        raise Busy(f'{len(self._queue)} images are queued (limit {self.max_queue}); retry later')
      for i, p in enumerate(payloads):
        self._queue.append((job, i, p, now))
      self._cond.notify()
    return job.future

  def _take(self) -> list | None:
    with self._cond:
      while not self._queue and not self._closed:
        self._cond.wait()
      if not self._queue:
        return None
      deadline = self._queue[0][3] + self.max_wait_s
      while len(self._queue) < self.max_batch and not self._closed:
        left = deadline - time.monotonic()
        if left <= 0:
          break
        self._cond.wait(left)
      n = min(self.max_batch, len(self._queue))
      return [self._queue.popleft() for _ in range(n)]

  def _run(self) -> None:
    while True:
      batch = self._take()
      if batch is None:
        return
      t0 = time.perf_counter()
      try:
        results = list(self._process([p for _, _, p, _ in batch]))
        if len(results) != len(batch):
          raise RuntimeError(f'process returned {len(results)} results for {len(batch)} payloads')
      except BaseException as e:  # noqa: BLE001 - delivered to the waiting requests
        results = [e] * len(batch)
      self.batches += 1
      if self._on_batch is not None:
        self._on_batch(len(batch), time.perf_counter() - t0)
      for (job, i, _, _), r in zip(batch, results):
        if isinstance(r, BaseException):
          job.error = job.error or r
        else:
          job.results[i] = r
        job.remaining -= 1
        if job.remaining == 0 and not job.future.done():
          if job.error is not None:
            job.future.set_exception(job.error)
          else:
            job.future.set_result(job.results)

  def close(self, timeout: float = 30.0) -> None:
    """Finishes the queued batches, then stops the worker."""
    with self._cond:
      self._closed = True
      self._cond.notify_all()
    self._thread.join(timeout)
