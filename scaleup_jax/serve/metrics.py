"""Counters and histograms of the firewall in the Prometheus text format (no extra dependency).

Thread-safe: the batcher's worker thread and the event loop both update them.

Example:
  >>> m = Metrics(batch_buckets=(1, 8, 32))
  >>> m.observe_request('200', 0.012, images=2)
  >>> print(m.render(extra_gauges={'scaleup_queue_images': 0}))
"""

from __future__ import annotations

import math
import threading
from typing import Mapping, Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
  """Cumulative-bucket histogram (Prometheus ``histogram`` type)."""

  def __init__(self, buckets: Sequence[float]):
    self.bounds = tuple(sorted(float(b) for b in buckets)) + (math.inf,)
    self.counts = [0] * len(self.bounds)
    self.total = 0.0
    self.n = 0

  def observe(self, value: float) -> None:
    for i, b in enumerate(self.bounds):
      if value <= b:
        self.counts[i] += 1
        break
    self.total += float(value)
    self.n += 1

  def lines(self, name: str, labels: str = '') -> list[str]:
    out, running = [], 0
    sep = ',' if labels else ''
    for b, c in zip(self.bounds, self.counts):
      running += c
      le = '+Inf' if math.isinf(b) else f'{b:g}'
      out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
    lab = f'{{{labels}}}' if labels else ''
    out.append(f'{name}_sum{lab} {self.total:.6g}')
    out.append(f'{name}_count{lab} {self.n}')
    return out


class Metrics:
  """What ``GET /metrics`` reports.

  Args:
    batch_buckets: the engine's compiled batch sizes (histogram bounds of the
      batch sizes).
  """

  def __init__(self, batch_buckets: Sequence[int]):
    self._lock = threading.Lock()
    self.requests: dict[str, int] = {}
    self.images = 0
    self.flagged = 0
    self.blocked = 0
    self.store_errors = 0
    self.batches: dict[int, int] = {int(b): 0 for b in batch_buckets}
    self.batch_size = Histogram(batch_buckets)
    self.latency = Histogram(LATENCY_BUCKETS)
    self.batch_seconds = Histogram(LATENCY_BUCKETS)

  def observe_request(self, status: str, seconds: float, images: int = 0) -> None:
    with self._lock:
      self.requests[status] = self.requests.get(status, 0) + 1
      self.latency.observe(seconds)
      self.images += int(images)

  def observe_batch(self, n: int, bucket: int, seconds: float, flagged: int, blocked: int) -> None:
    with self._lock:
      self.batches[int(bucket)] = self.batches.get(int(bucket), 0) + 1
      self.batch_size.observe(n)
      self.batch_seconds.observe(seconds)
      self.flagged += int(flagged)
      self.blocked += int(blocked)

  def observe_store_error(self) -> None:
    with self._lock:
      self.store_errors += 1

  def render(self, extra_gauges: Mapping[str, float] | None = None) -> str:
    """The Prometheus text exposition (version 0.0.4)."""
    with self._lock:
      out = ['# HELP scaleup_requests_total Classify requests answered, by HTTP status.',
             '# TYPE scaleup_requests_total counter']
      for status in sorted(self.requests):
        out.append(f'scaleup_requests_total{{status="{status}"}} {self.requests[status]}')
      out += ['# HELP scaleup_images_total Images classified (accepted requests).',
              '# TYPE scaleup_images_total counter', f'scaleup_images_total {self.images}',
              '# HELP scaleup_flagged_total Images the calibrated detector flagged.',
              '# TYPE scaleup_flagged_total counter', f'scaleup_flagged_total {self.flagged}',
              '# HELP scaleup_blocked_total Flagged images whose label was withheld (policy block).',
              '# TYPE scaleup_blocked_total counter', f'scaleup_blocked_total {self.blocked}',
              '# HELP scaleup_store_errors_total Batches whose flagged records could not be written.',
              '# TYPE scaleup_store_errors_total counter',
              f'scaleup_store_errors_total {self.store_errors}',
              '# HELP scaleup_batches_total Detector calls, by compiled bucket size.',
              '# TYPE scaleup_batches_total counter']
      for b in sorted(self.batches):
        out.append(f'scaleup_batches_total{{bucket="{b}"}} {self.batches[b]}')
      out += ['# HELP scaleup_batch_size Images per detector call (before padding).',
              '# TYPE scaleup_batch_size histogram', *self.batch_size.lines('scaleup_batch_size'),
              '# HELP scaleup_batch_seconds Wall time of one detector call and its store write.',
              '# TYPE scaleup_batch_seconds histogram',
              *self.batch_seconds.lines('scaleup_batch_seconds'),
              '# HELP scaleup_request_latency_seconds Classify request latency in the app.',
              '# TYPE scaleup_request_latency_seconds histogram',
              *self.latency.lines('scaleup_request_latency_seconds')]
    for name, value in (extra_gauges or {}).items():
      out += [f'# TYPE {name} gauge', f'{name} {value:g}']
    return '\n'.join(out) + '\n'
