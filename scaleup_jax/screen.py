"""Sequential SCALE-UP screen: full SPC's thresholded decisions with fewer forwards.

Full SCALE-UP costs ``1 + |S|`` forward passes per image. A *thresholded*
decision (flag when ``SPC > T``; at ``SPC == T`` flag with probability
``tie_prob``, :mod:`scaleup_jax.calibration`) often needs fewer: with
``|S| = m`` scales, ``g`` agreements and ``d`` disagreements after ``q = g + d``
queries, the final agreement count ``a`` lies in ``[g, g + m - q]``. The flag
probability is a non-decreasing step function ``P(a)`` of ``a``
(0 below the threshold, ``tie_prob`` at it, 1 above), so an image is *decided*
as soon as ``P(g) == P(g + m - q)``: no remaining answer can change it. The
screen then stops querying it.

How it runs, per batch of at most ``batch_size`` images:

1. Round 0: the unscaled prediction ``C(x)`` of every image (always needed:
   it is what the scaled labels are compared with, and the returned ``preds``).
2. Rounds 1..m: the scales in :attr:`SequentialScreen.order` (default: the
   largest first, which on CIFAR-10 models disagrees with ``C(x)`` for most
   benign images; :func:`disagreement_order` derives it from benign label
   rows instead). Each round queries only the undecided images: their
   indices are gathered on the device into the smallest *bucket* size that
   holds them (a fixed set, default 256, 192, 128, 96, 64, 48, 32, 16, 8),
   padded with a repeat of a real index whose result is dropped. Every bucket
   is one compiled shape, so nothing recompiles after the first batch; the
   scale factor is a per-row argument, not a constant.
3. After each round the host reads the bucket's labels (one device-to-host
   transfer of ``bucket`` int32 per round), updates ``g`` and ``d`` and
   computes the next round's indices. These round trips are counted in
   :attr:`ScreenResult.rounds` and measured by ``python -m eval.bench``.

Exactness: the returned flag probability of every image equals
``calibration.flag_probability(spc, threshold)`` of full SPC, because ``P`` is
evaluated on the same float32 SPC values that
:func:`scaleup_jax.scaleup.spc_from_labels` produces and every image's
interval ``[g, g + m - q]`` has collapsed to one value of ``P``;
:meth:`ScreenResult.flags` draws the tie coins exactly as
:func:`scaleup_jax.calibration.flag` does (``jax.random.uniform(key, (N,))``
compared with the probability), so the same key gives the same flags as full
SPC. The one assumption is that the model labels an image the same in a
gathered sub-batch as in the full batch; XLA's float32 result can change in
the last bits with the batch shape, which would only matter for an image
whose two top logits tie to round-off (``tests/test_screen.py`` and
``eval.bench`` check equality on random and real images).

References:
  Guo et al. "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection
  via Analyzing Scaled Prediction Consistency". ICLR 2023, Eq. 1-2.
  https://arxiv.org/abs/2302.03251
  Wald. "Sequential Tests of Statistical Hypotheses". Ann. Math. Statist.
  16(2), 1945 (stopping once the decision is determined).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scaleup_jax import calibration
from scaleup_jax import scaleup
from scaleup_jax.validation import InputError, check_images, check_scales

DEFAULT_BUCKETS = (256, 192, 128, 96, 64, 48, 32, 16, 8)
CLEAR, TIE, FLAG = 0, 1, 2  # decision codes of ScreenResult.decisions
ORDERS = ('descending', 'ascending')


# ---------------------------------------------------------------- the decision rule


def _spc_values(num_scales: int) -> np.ndarray:
  """float32 ``(m + 1,)``: the SPC that full SCALE-UP computes for 0..m agreements.

  Computed by :func:`scaleup.spc_from_labels` on JAX arrays, the code path of
  the compiled detector, so that the values are bit-identical to its output.
  """
  m = int(num_scales)
  rows = np.ones((m + 1, 1 + m), np.int32)
  rows[:, 0] = 0
  for a in range(m + 1):
    rows[a, 1:1 + a] = 0  # a columns agree with column 0
  return np.asarray(scaleup.spc_from_labels(jnp.asarray(rows)), np.float32)


def flag_probability_by_agreement(num_scales: int, threshold) -> np.ndarray:
  """Flag probability of full SPC as a function of the number of agreeing scales.

  Args:
    num_scales: ``m = |S|``.
    threshold: a :class:`scaleup_jax.calibration.Threshold` (flag ``SPC > t``,
      ties with ``tie_prob``), or a float ``T`` for the deterministic
      ``SPC > T``.

  Returns:
    float64 ``(m + 1,)``: entry ``a`` is the probability that an image whose
    SPC is ``a / m`` is flagged; non-decreasing.

  Example:
    >>> thr = calibration.Threshold(1.0, 0.48, 0.05, 'conformal', 1000, 0, 100, True)
    >>> flag_probability_by_agreement(5, thr)
    array([0.  , 0.  , 0.  , 0.  , 0.  , 0.48])
  """
  if int(num_scales) < 1:
    raise InputError(f'num_scales must be >= 1; got {num_scales}')
  spc = _spc_values(num_scales)
  if isinstance(threshold, calibration.Threshold):
    return calibration.flag_probability(spc, threshold)
  if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.number)):
    raise InputError(f'threshold must be a calibration.Threshold or a number; got {threshold!r}')
  t = float(threshold)
  if math.isnan(t):
    raise InputError('threshold is NaN')
  return (spc > np.float32(t)).astype(np.float64)


def decided(prob_by_agreement: np.ndarray, agreements, queried) -> np.ndarray:
  """bool: whether no answer to the remaining scales can change the flag probability.

  Args:
    prob_by_agreement: ``(m + 1,)`` from :func:`flag_probability_by_agreement`.
    agreements: ``(N,)`` scales queried so far whose label equals ``C(x)``.
    queried: ``(N,)`` scales queried so far.

  Returns:
    bool ``(N,)``.
  """
  p = np.asarray(prob_by_agreement)
  m = p.shape[0] - 1
  g = np.asarray(agreements)
  return p[g] == p[g + (m - np.asarray(queried))]


def disagreement_order(label_matrix, scales: Sequence[float]) -> tuple:
  """Scale order for the screen: most often disagreeing with ``C(x)`` first.

  Args:
    label_matrix: ``(M, 1 + S)`` label rows of benign images (e.g. the
      calibration set's, which calibrating the threshold computes anyway),
      column 0 the unscaled prediction.
    scales: the ``S`` factors of its columns.

  Returns:
    A permutation of ``range(S)``: indices into ``scales``, by descending
    disagreement rate (ties: larger scale first).

  Example:
    >>> disagreement_order(np.array([[1, 1, 0], [2, 2, 0], [3, 0, 3]]), (3.0, 11.0))
    (1, 0)
  """
  lm = np.asarray(label_matrix)
  scales = np.asarray(check_scales(scales), np.float64)
  if lm.ndim != 2 or lm.shape[1] != 1 + scales.size or lm.shape[0] == 0:
    raise InputError(f'label matrix must have shape (M >= 1, 1 + {scales.size}); got {lm.shape}')
  rate = np.mean(lm[:, 1:] != lm[:, :1], axis=0)
  return tuple(int(j) for j in sorted(range(scales.size), key=lambda j: (-rate[j], -scales[j])))


def _resolve_order(order, scales: tuple) -> tuple:
  m = len(scales)
  if order is None or order == 'descending':
    return tuple(sorted(range(m), key=lambda j: -scales[j]))
  if order == 'ascending':
    return tuple(sorted(range(m), key=lambda j: scales[j]))
  if isinstance(order, str):
    raise InputError(f'unknown order {order!r}; expected {ORDERS} or a permutation of range({m})')
  got = tuple(int(j) for j in order)
  if sorted(got) != list(range(m)):
    raise InputError(f'order must be a permutation of range({m}) (indices into the scales); got {list(order)}')
  return got


def _resolve_buckets(buckets, batch_size: int) -> tuple:
  if batch_size < 1:
    raise InputError(f'batch_size must be >= 1; got {batch_size}')
  if buckets is None:
    buckets = [b for b in DEFAULT_BUCKETS if b < batch_size] + [batch_size]
  b = sorted({int(x) for x in buckets})
  if not b or b[0] < 1:
    raise InputError(f'bucket sizes must be >= 1; got {list(buckets)}')
  if b[-1] != batch_size:
    raise InputError(f'the largest bucket must equal batch_size {batch_size} (a full batch '
                     f'must fit); got buckets {b}')
  return tuple(b)


# ---------------------------------------------------------------- results


@dataclasses.dataclass
class ScreenResult:
  """What :meth:`SequentialScreen.screen` found.

  Attributes:
    preds: int32 ``(N,)`` predictions on the unscaled images.
    flag_prob: float64 ``(N,)``: 1 (flag), ``tie_prob`` (the tie) or 0
      (clear); equals ``calibration.flag_probability`` of full SPC.
    agreements: int ``(N,)`` queried scales whose label equals ``preds``.
    queried: int ``(N,)`` scales queried per image (``forwards - 1``).
    labels: int32 ``(N, 1 + S)``, columns in the order of the screen's
      ``scales`` (column 0 the unscaled prediction), ``-1`` where a scale was
      not queried.
    rounds: one dict per device call: ``factor``, ``rows`` (real images),
      ``bucket`` (rows computed), ``seconds`` (host wall time of the call
      including the transfer back).
  """

  preds: np.ndarray
  flag_prob: np.ndarray
  agreements: np.ndarray
  queried: np.ndarray
  labels: np.ndarray
  rounds: list

  @property
  def forwards(self) -> np.ndarray:
    """int ``(N,)``: forward passes each image cost (1 + scales queried)."""
    return 1 + self.queried

  @property
  def rows_computed(self) -> int:
    """Forward rows the device computed, bucket padding included."""
    return int(sum(r['bucket'] for r in self.rounds))

  @property
  def decisions(self) -> np.ndarray:
    """int8 ``(N,)``: :data:`CLEAR` (0), :data:`TIE` (1) or :data:`FLAG` (2)."""
    p = self.flag_prob
    return np.where(p >= 1.0, FLAG, np.where(p <= 0.0, CLEAR, TIE)).astype(np.int8)

  def flags(self, key: jax.Array) -> np.ndarray:
    """bool ``(N,)``: the randomised decision, coins as :func:`calibration.flag` draws them.

    Args:
      key: a JAX PRNG key; the same key gives the same flags as
        ``calibration.flag(key, full_spc, threshold)``.
    """
    coins = np.asarray(jax.random.uniform(key, self.flag_prob.shape), np.float64)
    return coins < self.flag_prob

  def summary(self) -> dict:
    """Forwards per image, rows computed, rounds and decision counts (JSON-able)."""
    d = self.decisions
    return {'images': int(self.preds.size),
            'forwards_per_image': float(np.mean(self.forwards)),
            'rows_per_image': self.rows_computed / max(1, self.preds.size),
            'device_calls': len(self.rounds),
            'clear': int(np.sum(d == CLEAR)), 'tie': int(np.sum(d == TIE)),
            'flag': int(np.sum(d == FLAG))}

  @staticmethod
  def concatenate(parts: Sequence['ScreenResult']) -> 'ScreenResult':
    """One result from per-batch results, in order."""
    if not parts:
      raise InputError('no screen results to concatenate')
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return ScreenResult(cat('preds'), cat('flag_prob'), cat('agreements'), cat('queried'),
                        cat('labels'), [r for p in parts for r in p.rounds])


# ---------------------------------------------------------------- the screen


class SequentialScreen:
  """Thresholded SCALE-UP decisions that query each image only until they are determined.

  Args:
    apply_fn: ``(variables, images (b, H, W, C)) -> logits (b, K)``.
    threshold: a :class:`~scaleup_jax.calibration.Threshold` (e.g. from
      :func:`~scaleup_jax.calibration.calibrate_threshold` on benign SPC) or a
      float ``T`` for the deterministic ``SPC > T``.
    scales: the SCALE-UP scale set ``S`` (each >= 1), as for full SPC.
    order: query order: ``'descending'`` (default, largest scale first),
      ``'ascending'``, or a permutation of ``range(len(scales))`` such as
      :func:`disagreement_order` returns.
    batch_size: images per batch (the largest bucket).
    buckets: the compiled sub-batch sizes; default :data:`DEFAULT_BUCKETS`
      below ``batch_size`` plus ``batch_size``.

  Attributes:
    prob_by_agreement: ``(m + 1,)`` flag probability per agreement count.
    trace_counts: ``{bucket: times traced}``; each bucket traces once.

  Example:
    >>> thr = calibration.calibrate_threshold(benign_cal_spc, 0.05)
    >>> scr = SequentialScreen(partial(model.apply, train=False), thr)
    >>> res = scr.screen(variables, images)            # (N, 32, 32, 3) in [0, 1]
    >>> flagged = res.flags(jax.random.key(0))         # == calibration.flag(key, spc, thr)
    >>> res.summary()['forwards_per_image']            # < 6

  References:
    Guo et al. 2023, Eq. 1-2 (SPC); Wald 1945 (sequential stopping).
  """

  def __init__(self, apply_fn: Callable, threshold, scales: Sequence[float] = scaleup.DEFAULT_SCALES,
               order=None, batch_size: int = 256, buckets: Sequence[int] | None = None):
    self.scales = tuple(float(s) for s in check_scales(scales))
    self.order = _resolve_order(order, self.scales)
    self.threshold = threshold
    self.prob_by_agreement = flag_probability_by_agreement(len(self.scales), threshold)
    self.batch_size = int(batch_size)
    self.buckets = _resolve_buckets(buckets, self.batch_size)
    self.trace_counts: collections.Counter = collections.Counter()

    def query(variables, images, idx, factors):
      """Labels of ``clip(factors[i] * images[idx[i]])``: ``(b,)`` int32."""
      self.trace_counts[int(idx.shape[0])] += 1  # runs at trace time only
      x = jnp.take(images, idx, axis=0)
      x = jnp.clip(factors.astype(x.dtype)[:, None, None, None] * x, 0.0, 1.0)
      return scaleup.predict_labels(apply_fn, variables, x)

    self._query = jax.jit(query)

  @property
  def num_scales(self) -> int:
    return len(self.scales)

  def replace(self, threshold=None, order=None) -> 'SequentialScreen':
    """A screen with another threshold and/or order sharing this one's compiled buckets.

    Example:
      >>> strict = scr.replace(threshold=calibration.calibrate_threshold(cal_spc, 0.01))
    """
    new = object.__new__(SequentialScreen)
    new.__dict__.update(self.__dict__)
    if threshold is not None:
      new.threshold = threshold
      new.prob_by_agreement = flag_probability_by_agreement(len(self.scales), threshold)
    if order is not None:
      new.order = _resolve_order(order, self.scales)
    return new

  def bucket(self, rows: int) -> int:
    """The smallest bucket that holds ``rows`` images."""
    for b in self.buckets:
      if b >= rows:
        return b
    raise InputError(f'{rows} rows exceed the largest bucket {self.buckets[-1]}')

  def compile(self, variables, image_shape=(32, 32, 3), dtype=jnp.float32) -> float:
    """Compiles every bucket ahead of time; returns the seconds it took."""
    t0 = time.perf_counter()
    images = jnp.zeros((self.batch_size, *image_shape), dtype)
    for b in self.buckets:
      self._query(variables, images, jnp.zeros((b,), jnp.int32),
                  jnp.ones((b,), jnp.float32)).block_until_ready()
    return time.perf_counter() - t0

  def _run(self, variables, images_dev, idx: np.ndarray, factor: float, rounds: list) -> np.ndarray:
    rows = idx.size
    b = self.bucket(rows)
    pad = np.full((b,), idx[0], np.int32)
    pad[:rows] = idx
    t0 = time.perf_counter()
    out = np.asarray(self._query(variables, images_dev, pad, np.full((b,), factor, np.float32)))
    rounds.append({'factor': float(factor), 'rows': int(rows), 'bucket': int(b),
                   'seconds': time.perf_counter() - t0})
    return out[:rows]

  def screen_batch(self, variables, images) -> ScreenResult:
    """Screens one batch of at most ``batch_size`` images (see the module docstring).

    Args:
      variables: the model's variables.
      images: ``(n, H, W, C)`` float in [0, 1], ``1 <= n <= batch_size``
        (padded to ``batch_size`` on the host, so that one compiled shape
        serves every batch; not validated here, :meth:`screen` does).

    Returns:
      A :class:`ScreenResult` for the ``n`` images.
    """
    n = int(images.shape[0])
    if not 1 <= n <= self.batch_size:
      raise InputError(f'a batch holds 1 to {self.batch_size} images; got {n}')
    if n < self.batch_size:
      buf = np.zeros((self.batch_size, *images.shape[1:]), np.asarray(images[:1]).dtype)
      buf[:n] = np.asarray(images)
      images = buf
    images_dev = jax.device_put(images)
    m, p = self.num_scales, self.prob_by_agreement
    rounds: list = []
    labels = np.full((n, 1 + m), -1, np.int32)
    preds = self._run(variables, images_dev, np.arange(n, dtype=np.int32), 1.0, rounds)
    labels[:, 0] = preds
    agree = np.zeros(n, np.int64)
    queried = np.zeros(n, np.int64)
    done = decided(p, agree, queried)
    for j in self.order:
      todo = np.flatnonzero(~done).astype(np.int32)
      if todo.size == 0:
        break
      lab = self._run(variables, images_dev, todo, self.scales[j], rounds)
      labels[todo, 1 + j] = lab
      agree[todo] += lab == preds[todo]
      queried[todo] += 1
      done[todo] = decided(p, agree[todo], queried[todo])
    if not done.all():  # cannot happen: after m queries every interval is one point
      raise AssertionError('sequential screen left images undecided after all scales')
    return ScreenResult(preds, p[agree].astype(np.float64), agree, queried, labels, rounds)

  def screen(self, variables, images, progress: bool = False) -> ScreenResult:
    """Screens any number of images in batches of ``batch_size``.

    Args:
      variables: the model's variables.
      images: ``(N, H, W, C)`` float in [0, 1]; validated (rank, dtype, NaN,
        range) as :func:`scaleup.detect_batched` does.
      progress: show a progress bar.

    Returns:
      A :class:`ScreenResult` for the ``N`` images.
    """
    images = check_images(images)
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    parts = [self.screen_batch(variables, images[s:s + self.batch_size])
             for s in tqdm(range(0, len(images), self.batch_size), disable=not progress,
                           desc='screen', unit='batch', leave=False)]
    return ScreenResult.concatenate(parts)


def full_spc_flag_probability(spc, threshold) -> np.ndarray:
  """What the screen must reproduce: full SPC's flag probability at ``threshold``.

  ``calibration.flag_probability(spc, threshold)`` for a Threshold,
  ``spc > T`` for a float.
  """
  if isinstance(threshold, calibration.Threshold):
    return calibration.flag_probability(spc, threshold)
  return (np.asarray(spc, np.float32) > np.float32(threshold)).astype(np.float64)


__all__ = [
    'SequentialScreen', 'ScreenResult', 'flag_probability_by_agreement', 'decided',
    'disagreement_order', 'full_spc_flag_probability', 'DEFAULT_BUCKETS', 'CLEAR', 'TIE', 'FLAG',
]
