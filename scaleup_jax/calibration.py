"""Thresholds calibrated to a false-positive budget, with a randomised tie-break.

A defender deploys a detector with one threshold and a budget ``alpha`` of
false alarms on benign inputs. SCALE-UP's scores are discrete (SPC takes
``|S| + 1`` values), so a deterministic rule ``score > t`` jumps over most
budgets: on the zoo models about 10% of benign images share the top SPC with
the poisoned ones, and ``SPC > t`` flags either none of them or all. This module
picks the threshold from the defender's benign *calibration* scores and flags a
score equal to it with a probability ``tie_prob`` (a coin drawn from an explicit
PRNG key), which is the Neyman-Pearson randomised test on discrete scores.

Decision rule (both rules share it)::

    flag(s) = 1                  if s > threshold
              Bernoulli(tie_prob) if s == threshold
              0                  if s < threshold

Two ways to choose ``(threshold, tie_prob)`` from ``n`` calibration scores:

* ``'conformal'`` (default, with a finite-sample guarantee). Let
  ``k = floor(alpha (n + 1))``. The threshold is the ``k``-th largest
  calibration score, ``G`` the number of calibration scores strictly above
  it and ``E`` the number equal to it, and
  ``tie_prob = (alpha (n + 1) - G) / (1 + E)``. This is the randomised
  (smoothed) conformal p-value test ``p(s) <= alpha`` restricted to the
  threshold form. **Guarantee**: if the ``n`` calibration scores and a fresh
  benign score are exchangeable (e.g. i.i.d. benign images scored by a
  function fitted on *other* data) and the coin is independent of them, then
  ``alpha - 1/(n + 1) < P(flag fresh benign) <= alpha``, the probability taken
  over the calibration draw, the fresh image and the coin. It is a *marginal*
  bound: the false-positive rate of one calibrated detector (conditional on its
  calibration set) scatters around ``alpha`` with a standard deviation of
  about ``sqrt(alpha (1 - alpha) / n)`` and can exceed ``alpha``. When
  ``n < ceil(1 / alpha) - 1`` no threshold certifies ``alpha``
  (``k = 0``); the detector then flags nothing (``feasible`` is False) and
  its false-positive rate is 0 by construction.
* ``'plugin'`` (no finite-sample guarantee). The Neyman-Pearson randomised test
  on the empirical calibration distribution: the threshold and
  ``tie_prob = (alpha n - G) / E`` flag exactly ``alpha`` of the calibration
  scores in expectation. On fresh data its false-positive rate is near
  ``alpha`` but may exceed it in expectation by O(1/n).

Proof sketch of the conformal bound: the smoothed p-value
``p(s) = (#{i: s_i > s} + U (1 + #{i: s_i = s})) / (n + 1)`` with
``U ~ Uniform(0, 1)`` is exactly uniform on [0, 1] for an exchangeable fresh
score, so ``P(p <= alpha) = alpha``. The threshold rule above flags exactly
when ``p <= alpha`` for scores at or above the threshold and never below it;
the two differ only when the fresh score ranks ``k + 1``-th among the
``n + 1`` (probability ``1/(n + 1)``) and then by less than one coin, hence the
two-sided bound.

Scores are compared in float32 with a relative tolerance of
:data:`TIE_RTOL` (scores computed by the same code path are bit-identical;
the tolerance only absorbs a float64/float32 round trip).

References:
  Vovk, Gammerman, Shafer. "Algorithmic Learning in a Random World".
  Springer 2005 (smoothed conformal p-values, Ch. 2).
  Lehmann, Romano. "Testing Statistical Hypotheses", 3rd ed., Springer 2005,
  Sec. 3.2 (randomised Neyman-Pearson tests for discrete statistics).
  Clopper, Pearson. "The use of confidence or fiducial limits illustrated in
  the case of the binomial". Biometrika 26(4), 1934.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Mapping, Sequence

import jax
import numpy as np

from scaleup_jax import integrity
from scaleup_jax import scaleup
from scaleup_jax.validation import InputError

RULES = ('conformal', 'plugin')
DEFAULT_ALPHAS = (0.01, 0.05, 0.1)
TIE_RTOL = 1e-6
KIND = 'scaleup_calibrated_detector'
FORMAT_VERSION = 1


class CalibrationMismatchError(InputError):
  """A saved calibrated detector is used with another model, scale set or score."""


# ---------------------------------------------------------------- thresholds


@dataclasses.dataclass(frozen=True)
class Threshold:
  """A calibrated randomised threshold (see the module docstring).

  Attributes:
    threshold: flag scores above it; ``inf`` when ``feasible`` is False.
    tie_prob: probability of flagging a score equal to ``threshold``.
    alpha: the false-positive budget it was calibrated for.
    rule: ``'conformal'`` or ``'plugin'``.
    num_calibration: ``n``, the benign calibration scores used.
    num_above: calibration scores strictly above ``threshold``.
    num_tied: calibration scores equal to ``threshold``.
    feasible: False when ``n`` is too small for ``alpha`` under the conformal
      rule (the detector then flags nothing).
  """

  threshold: float
  tie_prob: float
  alpha: float
  rule: str
  num_calibration: int
  num_above: int
  num_tied: int
  feasible: bool

  @property
  def calibration_rate(self) -> float:
    """Expected fraction of the calibration scores this rule flags."""
    return (self.num_above + self.tie_prob * self.num_tied) / self.num_calibration

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d['threshold'] = _json_float(self.threshold)
    return d

  @classmethod
  def from_dict(cls, d: Mapping) -> 'Threshold':
    fields = {f.name for f in dataclasses.fields(cls)}
    missing = sorted(fields - set(d))
    if missing:
      raise InputError(f'threshold record lacks {missing}')
    kw = {k: d[k] for k in fields}
    kw['threshold'] = float(kw['threshold'])
    return cls(**kw)


def _json_float(x: float):
  return x if math.isfinite(x) else ('inf' if x > 0 else '-inf')


def min_calibration_size(alpha: float) -> int:
  """Smallest ``n`` for which the conformal rule can flag anything at ``alpha``.

  ``floor(alpha (n + 1)) >= 1`` needs ``n >= ceil(1 / alpha) - 1``: 99 scores
  for 1%, 19 for 5%, 9 for 10%.

  Example:
    >>> min_calibration_size(0.01)
    99
  """
  _check_alpha(alpha)
  if alpha == 0:
    raise InputError('alpha = 0 is never met by a rule that flags anything')
  return max(0, math.ceil(1.0 / alpha - 1e-9) - 1)


def _check_alpha(alpha) -> float:
  a = float(alpha)
  if not (0.0 <= a <= 1.0) or math.isnan(a):
    raise InputError(f'false-positive budget alpha must lie in [0, 1]; got {alpha!r}')
  return a


def _as_scores(scores, what: str) -> np.ndarray:
  s = np.asarray(scores)
  if s.ndim != 1:
    raise InputError(f'{what} must be a 1-D array of scores; got shape {s.shape}')
  if s.dtype == bool or not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
    raise InputError(f'{what} must be numeric; got dtype {s.dtype}')
  s = s.astype(np.float32)
  if not np.all(np.isfinite(s)):
    bad = int(np.flatnonzero(~np.isfinite(s))[0])
    raise InputError(f'{what} contain a non-finite value {s[bad]} at index {bad}')
  return s


def _tol(t: float) -> float:
  return TIE_RTOL * max(1.0, abs(t))


def calibrate_threshold(calibration_scores, alpha: float, rule: str = 'conformal') -> Threshold:
  """Chooses ``(threshold, tie_prob)`` for a false-positive budget ``alpha``.

  Args:
    calibration_scores: ``(n,)`` scores of benign images, higher = more
      suspicious, *not* used to fit the score itself and disjoint from the
      images the detector will be evaluated on.
    alpha: the false-positive budget, in [0, 1].
    rule: ``'conformal'`` (marginal finite-sample guarantee
      ``alpha - 1/(n+1) < P(flag benign) <= alpha``) or ``'plugin'`` (exact
      ``alpha`` on the calibration scores, no guarantee); see the module
      docstring.

  Returns:
    A :class:`Threshold`.

  Example:
    >>> t = calibrate_threshold(np.array([0., 0., .2, .2, .4, 1., 1., 1., 1., 1.]), 0.3, 'plugin')
    >>> t.threshold, t.tie_prob   # 1.0 is held by 5 of 10: flag it w.p. 3/5
    (1.0, 0.6)

  References:
    Vovk et al. 2005, Ch. 2; Lehmann & Romano 2005, Sec. 3.2.
  """
  if rule not in RULES:
    raise InputError(f'unknown calibration rule {rule!r}; expected one of {RULES}')
  a = _check_alpha(alpha)
  s = _as_scores(calibration_scores, 'calibration scores')
  n = s.size
  if n == 0:
    raise InputError('need at least one benign calibration score to pick a threshold')
  # Distinct values, descending; neighbours within the tie tolerance are one value.
  desc = np.sort(s)[::-1].astype(np.float64)
  starts = np.concatenate([[True], desc[:-1] - desc[1:] > TIE_RTOL * np.maximum(1.0, np.abs(desc[:-1]))])
  first = np.flatnonzero(starts)
  vals = desc[first]
  counts = np.diff(np.concatenate([first, [n]]))
  above = np.concatenate([[0], np.cumsum(counts)[:-1]])  # G_j: strictly above vals[j]
  if rule == 'conformal':
    budget, own = a * (n + 1), 1
  else:
    budget, own = a * n, 0
  slack = 1e-9 * max(1.0, budget)
  if budget - own < -slack:  # conformal with floor(alpha (n+1)) = 0
    return Threshold(math.inf, 0.0, a, rule, n, 0, 0, False)
  # First value whose tail, with its ties, passes the budget: G_j <= B - own < G_j + E_j.
  past = np.flatnonzero(above + counts > budget - own + slack)
  if past.size == 0:  # the budget covers every calibration score (plugin with alpha = 1)
    j = len(vals) - 1
    return Threshold(float(vals[j]), 1.0, a, rule, n, int(above[j]), int(counts[j]), True)
  j = int(past[0])
  g, e = int(above[j]), int(counts[j])
  tie = float(np.clip((budget - g) / (own + e), 0.0, 1.0))
  return Threshold(float(vals[j]), tie, a, rule, n, g, e, True)


def flag_probability(scores, threshold: Threshold) -> np.ndarray:
  """Probability that each score is flagged (1 above, ``tie_prob`` at, 0 below).

  Args:
    scores: ``(N,)`` scores.
    threshold: from :func:`calibrate_threshold`.

  Returns:
    float64 ``(N,)`` in [0, 1]; its mean is the coin-averaged flag rate.
  """
  s = _as_scores(scores, 'scores').astype(np.float64)
  t = threshold.threshold
  if not math.isfinite(t):
    return np.zeros(s.shape) if t > 0 else np.ones(s.shape)
  tol = _tol(t)
  return np.where(s > t + tol, 1.0, np.where(np.abs(s - t) <= tol, threshold.tie_prob, 0.0))


def flag(key: jax.Array, scores, threshold: Threshold) -> np.ndarray:
  """The randomised decision: flags ``(N,)`` scores, ties by coins from ``key``.

  Args:
    key: a JAX PRNG key; the coins are ``jax.random.uniform(key, (N,))``, so
      the same key and scores give the same flags.
    scores: ``(N,)`` scores.
    threshold: from :func:`calibrate_threshold`.

  Returns:
    bool ``(N,)``.

  Example:
    >>> thr = calibrate_threshold(benign_calibration_spc, 0.05)
    >>> flagged = flag(jax.random.key(0), test_spc, thr)
  """
  prob = flag_probability(scores, threshold)
  coins = np.asarray(jax.random.uniform(key, prob.shape), np.float64)
  return coins < prob


# ---------------------------------------------------------------- intervals


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
  """Exact (Clopper-Pearson) two-sided binomial confidence interval.

  Args:
    successes: observed count, ``0 <= successes <= trials``.
    trials: number of trials, ``>= 1``.
    confidence: coverage, e.g. 0.95.

  Returns:
    ``(low, high)``; ``low = 0`` when ``successes = 0`` and ``high = 1`` when
    ``successes = trials``.

  Example:
    >>> clopper_pearson(0, 100)   # a zero count still allows up to 3.6%
    (0.0, 0.03621...)

  References:
    Clopper & Pearson, Biometrika 1934.
  """
  from scipy.stats import beta
  k, n = int(successes), int(trials)
  if n < 1 or not 0 <= k <= n:
    raise InputError(f'need 0 <= successes <= trials and trials >= 1; got {k} of {n}')
  if not 0.0 < confidence < 1.0:
    raise InputError(f'confidence must lie in (0, 1); got {confidence}')
  q = (1.0 - confidence) / 2
  lo = 0.0 if k == 0 else float(beta.ppf(q, k, n - k + 1))
  hi = 1.0 if k == n else float(beta.ppf(1 - q, k + 1, n - k))
  return lo, hi


def rate_record(flags, confidence: float = 0.95, expected=None) -> dict:
  """``{'rate', 'count', 'total', 'interval'}`` of a boolean flag vector.

  ``expected`` (the coin-averaged rate, optional) is stored beside it.
  """
  f = np.asarray(flags, bool)
  if f.ndim != 1 or f.size == 0:
    raise InputError(f'flags must be a non-empty 1-D array; got shape {f.shape}')
  k, n = int(f.sum()), int(f.size)
  out = {'rate': k / n, 'count': k, 'total': n,
         'interval': list(clopper_pearson(k, n, confidence)), 'confidence': confidence}
  if expected is not None:
    out['expected'] = float(expected)
  return out


def operating_point(key: jax.Array, threshold: Threshold, heldout_benign, positives,
                    confidence: float = 0.95) -> dict:
  """Realised rates of one calibrated threshold on held-out benign and poisoned scores.

  Args:
    key: PRNG key for the tie coins (split for benign and positives).
    threshold: from :func:`calibrate_threshold` on calibration scores
      disjoint from ``heldout_benign``.
    heldout_benign: ``(Nb,)`` benign scores never used for calibration.
    positives: ``(Np,)`` poisoned scores.
    confidence: of the Clopper-Pearson intervals.

  Returns:
    A dict: the threshold record, ``fpr`` and ``tpr`` rate records (realised
    with the coins, their exact binomial intervals, and the coin-averaged
    ``expected`` rates), ``alpha_in_fpr_interval``,
    ``fpr_sampling_sd`` (the spread expected from calibration and evaluation
    sampling together, ``sqrt(alpha (1 - alpha) (1/n + 1/Nb))``),
    ``within_sampling_error`` (``|FPR - alpha| <= 1.96 x`` that sd, or
    below ``alpha``) and ``reading``, one line that explains a zero or an
    unmet budget (None otherwise).
  """
  k_b, k_p = jax.random.split(key)
  b_prob = flag_probability(heldout_benign, threshold)
  p_prob = flag_probability(positives, threshold)
  b_flags = np.asarray(jax.random.uniform(k_b, b_prob.shape), np.float64) < b_prob
  p_flags = np.asarray(jax.random.uniform(k_p, p_prob.shape), np.float64) < p_prob
  fpr = rate_record(b_flags, confidence, b_prob.mean())
  tpr = rate_record(p_flags, confidence, p_prob.mean())
  a, n = threshold.alpha, threshold.num_calibration
  sd = math.sqrt(a * (1 - a) * (1.0 / n + 1.0 / fpr['total']))
  out = {'alpha': a, **threshold.to_dict(), 'fpr': fpr, 'tpr': tpr,
         'alpha_in_fpr_interval': bool(fpr['interval'][0] <= a <= fpr['interval'][1]),
         'fpr_sampling_sd': sd,
         'within_sampling_error': bool(fpr['rate'] <= a + 1.96 * sd)}
  out['reading'] = reading(out)
  return out


def reading(op: Mapping) -> str | None:
  """One line explaining every zero rate and an unmet budget of an operating point.

  Args:
    op: from :func:`operating_point` (or its JSON).

  Returns:
    The reading, or None when the threshold is feasible, both rates are
    positive and the realised FPR is within its sampling error of ``alpha``.
  """
  a, n = op['alpha'], op['num_calibration']
  if not op['feasible']:
    return (f'FPR and TPR are 0 because {n} calibration images cannot certify FPR <= {a:g} '
            f'(the conformal rule needs at least {min_calibration_size(a)}): it flags nothing')
  fpr, tpr = op['fpr'], op['tpr']
  t = float(op['threshold'])
  if fpr['expected'] == 0 and tpr['expected'] == 0:
    return f'FPR and TPR are 0 because no held-out score reaches the threshold {t:.4g}'
  parts = []
  if tpr['count'] == 0:
    if tpr['expected'] == 0:
      parts.append(f'TPR is 0 because every positive scores below the threshold {t:.4g} that '
                   f'holds benign false alarms to {a:g}')
    else:
      parts.append(f'TPR is 0 by chance: its expected value is {tpr["expected"]:.4f}, but no tie '
                   f'coin came up for the {tpr["total"]} positives')
  if fpr['count'] == 0:
    if fpr['expected'] == 0:
      parts.append(f'FPR is 0 because no held-out benign image reaches the threshold {t:.4g} '
                   f'(the true FPR is below {fpr["interval"][1]:.4f})')
    else:
      parts.append(f'FPR is 0 by chance (expected {fpr["expected"]:.4f}): none of the '
                   f'{fpr["total"]} held-out benign images was flagged; the true FPR is below '
                   f'{fpr["interval"][1]:.4f}')
  if not op['within_sampling_error']:
    parts.append(f'realised FPR {fpr["rate"]:.4f} exceeds the budget {a:g} by more than the '
                 f'sampling error ({1.96 * op["fpr_sampling_sd"]:.4f}): calibration and held-out '
                 'images may not be exchangeable (distribution shift)')
  return '; '.join(parts) or None


# ---------------------------------------------------------------- the detector


def model_fingerprint(variables) -> str:
  """One SHA-256 hex string over :func:`integrity.tree_digest` of ``variables``.

  Equal fingerprints mean bit-identical arrays at identical pytree paths.
  """
  digest = integrity.tree_digest(variables)
  h = hashlib.sha256()
  for path in sorted(digest):
    h.update(path.encode())
    h.update(b'\0')
    h.update(digest[path].encode())
    h.update(b'\n')
  return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class CalibratedDetector:
  """A label-only SCALE-UP score with a threshold calibrated to a budget.

  One object a defender saves (:meth:`save`), loads (:func:`load_detector`,
  which refuses another model or scale set) and applies (:meth:`flag_labels`,
  :meth:`flag_images`).

  Attributes:
    score: name of the score, one of :data:`scaleup.LABEL_SCORES`.
    scales: the amplification factors of the label matrix the score reads
      (the columns after the unscaled prediction), ascending.
    threshold: the calibrated :class:`Threshold` (holds ``alpha``).
    model_fingerprint: :func:`model_fingerprint` of the variables it was
      calibrated on.
    score_params: what the score fitted on benign images, if anything (the
      data-limited class statistics, the rank tables of ``class_rank``);
      JSON-serialisable.
    meta: free-form provenance (model path, calibration images, seed).
  """

  score: str
  scales: tuple
  threshold: Threshold
  model_fingerprint: str
  score_params: dict = dataclasses.field(default_factory=dict)
  meta: dict = dataclasses.field(default_factory=dict)

  @property
  def alpha(self) -> float:
    return self.threshold.alpha

  @property
  def forwards_per_image(self) -> int:
    return 1 + len(self.scales)

  def scores_from_labels(self, label_matrix) -> np.ndarray:
    """The detector's score of each row of a ``(N, 1 + S)`` label matrix on :attr:`scales`."""
    lm = np.asarray(label_matrix)
    if lm.ndim != 2 or lm.shape[1] != 1 + len(self.scales):
      raise CalibrationMismatchError(
          f'label matrix has shape {lm.shape}; this detector reads 1 + {len(self.scales)} columns '
          f'(unscaled, then scales {list(self.scales)})')
    return scaleup.label_score(self.score, lm, self.scales, self.score_params)

  def flag_labels(self, key: jax.Array, label_matrix) -> np.ndarray:
    """bool ``(N,)``: the calibrated randomised decision on a label matrix."""
    return flag(key, self.scores_from_labels(label_matrix), self.threshold)

  def flag_images(self, key: jax.Array, apply_fn, variables, images, batch_size: int = 256,
                  check_model: bool = True, label_fn=None) -> np.ndarray:
    """bool ``(N,)`` for images ``(N, H, W, C)`` in [0, 1] under ``(apply_fn, variables)``.

    Args:
      key: PRNG key of the tie coins.
      apply_fn: ``(variables, images) -> logits``.
      variables: must be the model the detector was calibrated on
        (checked by fingerprint unless ``check_model`` is False).
      images: ``(N, H, W, C)``.
      batch_size: images per compiled call.
      check_model: compare the fingerprint of ``variables`` first.
      label_fn: a compiled :func:`scaleup.make_label_matrix_fn` on
        :attr:`scales` to reuse across calls (built, and compiled, here if
        None).
    """
    if check_model:
      self.check_model(variables)
    fn = label_fn or scaleup.make_label_matrix_fn(apply_fn, self.scales)
    lm = scaleup.detect_batched(fn, images, batch_size, variables)
    return self.flag_labels(key, lm)

  def check_model(self, variables) -> None:
    """Raises :class:`CalibrationMismatchError` if ``variables`` are another model's."""
    got = model_fingerprint(variables)
    if got != self.model_fingerprint:
      raise CalibrationMismatchError(
          f'this detector was calibrated on model {self.model_fingerprint[:16]}…, the variables '
          f'given are model {got[:16]}…: recalibrate on benign images of this model')

  def to_dict(self) -> dict:
    return {'format_version': FORMAT_VERSION, 'score': self.score,
            'scales': [float(s) for s in self.scales],
            'threshold': self.threshold.to_dict(), 'model_fingerprint': self.model_fingerprint,
            'score_params': _jsonable(self.score_params), 'meta': _jsonable(self.meta)}

  @classmethod
  def from_dict(cls, d: Mapping) -> 'CalibratedDetector':
    if d.get('format_version') != FORMAT_VERSION:
      raise InputError(f'calibrated detector has format version {d.get("format_version")!r}; '
                       f'this code reads version {FORMAT_VERSION}')
    try:
      return cls(score=str(d['score']), scales=tuple(float(s) for s in d['scales']),
                 threshold=Threshold.from_dict(d['threshold']),
                 model_fingerprint=str(d['model_fingerprint']),
                 score_params=dict(d.get('score_params') or {}),
                 meta=dict(d.get('meta') or {}))
    except KeyError as e:
      raise InputError(f'calibrated detector record lacks {e.args[0]!r}') from None

  def save(self, path) -> Path:
    """Writes the detector atomically as JSON with its checksum and kind
    (:func:`integrity.save_json_checked`); a tampered file is refused at load."""
    return _save_json(Path(path), self.to_dict())


def _jsonable(obj):
  if isinstance(obj, Mapping):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, np.generic):
    return obj.item()
  return obj


def _save_json(path: Path, payload: dict) -> Path:
  return integrity.save_json_checked(path, payload, KIND)


def _load_json(path: Path) -> dict:
  return integrity.load_json_checked(path, KIND)


def load_detector(path, variables=None, scales: Sequence[float] | None = None,
                  score: str | None = None) -> CalibratedDetector:
  """Loads a saved :class:`CalibratedDetector`, refusing another model or scale set.

  Args:
    path: a file written by :meth:`CalibratedDetector.save`.
    variables: the model it will be applied to; if given, its fingerprint must
      match the one recorded at calibration.
    scales: if given, the scale set the caller queries; must equal the
      detector's.
    score: if given, the score name the caller expects.

  Returns:
    The detector.

  Raises:
    CalibrationMismatchError: another model, scale set or score.
    integrity.IntegrityError: a missing, corrupt or foreign file.
  """
  det = CalibratedDetector.from_dict(_load_json(Path(path)))
  if scales is not None:
    want = tuple(float(s) for s in np.asarray(scales, np.float64).reshape(-1))
    if len(want) != len(det.scales) or not np.allclose(want, det.scales, rtol=0, atol=1e-6):
      raise CalibrationMismatchError(
          f'{str(path)!r} was calibrated for scales {list(det.scales)}; got {list(want)}')
  if score is not None and score != det.score:
    raise CalibrationMismatchError(f'{str(path)!r} holds score {det.score!r}, not {score!r}')
  if variables is not None:
    try:
      det.check_model(variables)
    except CalibrationMismatchError as e:
      raise CalibrationMismatchError(f'{str(path)!r}: {e}') from None
  return det


def calibrate_detector(score: str, calibration_labels, scales: Sequence[float], alpha: float,
                       variables, rule: str = 'conformal', score_params: Mapping | None = None,
                       meta: Mapping | None = None) -> CalibratedDetector:
  """Calibrates a label-only score to a false-positive budget on benign label rows.

  Args:
    score: one of :data:`scaleup.LABEL_SCORES`.
    calibration_labels: ``(n, 1 + S)`` label matrix of benign calibration
      images on ``scales``; disjoint from any images used to fit
      ``score_params`` and from the evaluation images.
    scales: the ``S`` factors of those columns.
    alpha: the false-positive budget.
    variables: the model's variables (fingerprinted, not stored).
    rule: see :func:`calibrate_threshold`.
    score_params: from :func:`scaleup.fit_label_score` for scores that fit
      benign statistics.
    meta: provenance stored with it.

  Returns:
    A :class:`CalibratedDetector`.

  Example:
    >>> lm_cal = label_fn(variables, benign_calibration_images)     # (n, 1 + S)
    >>> det = calibrate_detector('spc', lm_cal, scales, 0.05, variables)
    >>> det.save('detector.json')
    >>> det = load_detector('detector.json', variables=variables, scales=scales)
    >>> flagged = det.flag_labels(jax.random.key(0), lm_test)
  """
  scales = scaleup.check_factors(scales)
  det = CalibratedDetector(score, scales, Threshold(math.inf, 0.0, float(alpha), rule, 1, 0, 0, False),
                           model_fingerprint(variables), dict(score_params or {}), dict(meta or {}))
  thr = calibrate_threshold(det.scores_from_labels(calibration_labels), alpha, rule)
  return dataclasses.replace(det, threshold=thr)


def describe(thr: Threshold) -> str:
  """``'> 0.8, = 0.8 w.p. 0.37'``: the rule in words."""
  if not thr.feasible:
    return 'never (n too small)'
  return f'> {thr.threshold:.4g}, = {thr.threshold:.4g} w.p. {thr.tie_prob:.3f}'
