"""The firewall's decision path: batch -> label matrix -> score -> calibrated decision -> store.

:class:`Firewall` ties an :class:`engine.Engine`, a saved
:class:`calibration.CalibratedDetector`, a policy and a
:class:`store.FlagStore` to a :class:`batcher.DynamicBatcher`. Per image it
returns the model's label, SPC (on the detector's scales), the detector's
score and the decision:

* policy ``'flag'``: the label is returned and a flagged image is marked
  (``"decision": "flag"``);
* policy ``'block'``: a flagged image's label is withheld
  (``"label": null, "decision": "block"``).

Unflagged images get ``"decision": "pass"``. Flagged images are written to the
store in one transaction per batch, *before* the batch's requests are
answered; if that write fails, the requests holding flagged images of the
batch fail (503) instead of being answered unrecorded.

The flag is the calibrated randomised rule of :mod:`scaleup_jax.calibration`
(``score > t``, or ``score == t`` with probability ``tie_prob``); its coin is
:meth:`engine.Engine.coins` of the image's pixel hash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Sequence

import numpy as np

from scaleup_jax import calibration
from scaleup_jax import scaleup
from scaleup_jax.serve import store as store_lib
from scaleup_jax.serve.batcher import DynamicBatcher
from scaleup_jax.serve.decode import Item
from scaleup_jax.serve.engine import Engine, compile_count, pixel_hash
from scaleup_jax.serve.metrics import Metrics
from scaleup_jax.validation import InputError

POLICIES = ('flag', 'block')


@dataclasses.dataclass(frozen=True)
class _Slot:
  request_id: str
  index: int
  item: Item


class Firewall:
  """Scores images in dynamic batches and records the flagged ones.

  Args:
    engine: the compiled :class:`Engine` (its scales are the detector's, or
      ``()`` for the no-detection baseline).
    detector: the saved calibrated detector; None only when the engine has no
      scales (the model served without detection).
    policy: ``'flag'`` or ``'block'``.
    store: where flagged inputs go; required with a detector.
    max_wait_s: how long a request waits for a batch to fill.
    max_queue: images queued before requests get 503.

  Raises:
    InputError: a detector without a store, a policy not in :data:`POLICIES`,
      or a detector whose scales are not the engine's.
  """

  def __init__(self, engine: Engine, detector: calibration.CalibratedDetector | None,
               policy: str = 'flag', store: store_lib.FlagStore | None = None,
               max_wait_s: float = 0.005, max_queue: int = 4096):
    if policy not in POLICIES:
      raise InputError(f'unknown policy {policy!r}; expected one of {POLICIES}')
    if engine.detection != (detector is not None):
      raise InputError('a detector needs an engine compiled on its scales, and the no-detection '
                       'engine takes no detector')
    if detector is not None:
      if tuple(detector.scales) != tuple(engine.scales):
        raise InputError(f'the detector reads scales {list(detector.scales)}, the engine was '
                         f'compiled for {list(engine.scales)}')
      if store is None:
        raise InputError('a firewall with a detector needs a store for its flagged inputs')
      detector.check_model(engine.model.variables)
    self.engine, self.detector, self.policy, self.store = engine, detector, policy, store
    self.metrics = Metrics(engine.buckets)
    self.compiles_ready = compile_count()
    self.fingerprint = (calibration.model_fingerprint(engine.model.variables)
                         if detector is None else detector.model_fingerprint)
    self.batcher = DynamicBatcher(self._process, engine.max_batch, max_wait_s, max_queue)

  @property
  def compiles_since_ready(self) -> int:
    """XLA compilations in this process since the firewall was ready (stays 0 while serving)."""
    return compile_count() - self.compiles_ready

  def _process(self, slots: Sequence[_Slot]) -> list:
    t0 = time.perf_counter()
    images = np.stack([s.item.pixels for s in slots])
    lm = self.engine.label_matrix(images)
    labels = lm[:, 0].astype(int)
    n = len(slots)
    if self.detector is None:
      out = [{'label': int(labels[i]), 'spc': None, 'score': None, 'flagged': False,
              'decision': 'pass'} for i in range(n)]
      self.metrics.observe_batch(n, self.engine.bucket_for(n), time.perf_counter() - t0, 0, 0)
      return out
    det = self.detector
    spc = scaleup.spc_from_labels(lm)
    scores = det.scores_from_labels(lm)
    prob = calibration.flag_probability(scores, det.threshold)
    coins = self.engine.coins([pixel_hash(s.item.pixels) for s in slots])
    flagged = coins < prob
    decision = 'block' if self.policy == 'block' else 'flag'
    out, records, now = [], [], time.time()
    for i, s in enumerate(slots):
      f = bool(flagged[i])
      out.append({'label': None if f and self.policy == 'block' else int(labels[i]),
                  'spc': float(spc[i]), 'score': float(scores[i]), 'flagged': f,
                  'decision': decision if f else 'pass'})
      if f:
        records.append(store_lib.FlagRecord(
            now, s.request_id, s.index, s.item.sha256, int(labels[i]), float(spc[i]),
            float(scores[i]), det.score, float(det.threshold.threshold), det.alpha, decision,
            self.fingerprint[:16], store_lib.thumbnail_png(s.item.pixels), s.item.blob,
            s.item.blob_type))
    if records:
      try:
        self.store.add_many(records)
      except store_lib.StoreError as e:
        self.metrics.observe_store_error()
        err = StoreUnavailable(f'a flagged image could not be recorded ({e}); nothing was '
                               'answered for it, retry later')
        out = [err if o['flagged'] else o for o in out]
    self.metrics.observe_batch(n, self.engine.bucket_for(n), time.perf_counter() - t0,
                               len(records), len(records) if self.policy == 'block' else 0)
    return out

  async def classify(self, items: Sequence[Item], timeout_s: float = 60.0) -> dict:
    """The response body for one request's images (already decoded and checked).

    Raises:
      batcher.Busy: the queue is full.
      StoreUnavailable: a flagged image of the request could not be recorded.
      asyncio.TimeoutError: no answer within ``timeout_s``.
    """
    request_id = uuid.uuid4().hex
    fut = self.batcher.submit([_Slot(request_id, i, it) for i, it in enumerate(items)])
    results = await asyncio.wait_for(asyncio.wrap_future(fut), timeout_s)
    names = self.engine.model.class_names
    for i, (r, it) in enumerate(zip(results, items)):
      r['index'] = i
      r['image_sha256'] = it.sha256
      if names is not None and r['label'] is not None and 0 <= r['label'] < len(names):
        r['class_name'] = names[r['label']]
    body = {'request_id': request_id, 'policy': self.policy if self.detector else 'none',
            'results': results}
    if self.detector is not None:
      body['detector'] = self.detector_summary(short=True)
    return body

  def detector_summary(self, short: bool = False) -> dict | None:
    """The calibration in force: score, alpha, rule (and, unless ``short``, its threshold)."""
    det = self.detector
    if det is None:
      return None
    out = {'score': det.score, 'alpha': det.alpha, 'rule': det.threshold.rule,
           'scales': list(det.scales)}
    if not short:
      out.update(threshold=calibration._json_float(det.threshold.threshold),
                 tie_prob=det.threshold.tie_prob, num_calibration=det.threshold.num_calibration,
                 feasible=det.threshold.feasible, rule_in_words=calibration.describe(det.threshold),
                 calibration_meta=det.meta)
    return out

  def close(self) -> None:
    self.batcher.close()
    if self.store is not None:
      self.store.close()


class StoreUnavailable(RuntimeError):
  """A flagged image could not be written to the store; its request is not answered."""
