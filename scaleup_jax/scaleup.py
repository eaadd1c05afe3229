"""SCALE-UP: scaled prediction consistency (SPC) from predicted labels alone.

For an input ``x`` in pixel space [0, 1] and a scale set ``S`` (default
{3, 5, 7, 9, 11}), SCALE-UP queries the classifier ``C`` on ``clip(n * x, 0, 1)``
for every ``n`` in ``S`` and scores

    SPC(x) = |{n in S : C(clip(n * x)) == C(x)}| / |S|.

Backdoor-poisoned inputs keep their (target) label under amplification, benign
inputs mostly do not, so ``x`` is flagged when ``SPC(x) > T``. In the
data-limited setting a defender holding a few benign images per class
standardises SPC by the statistics of the predicted class:
``(SPC - mu_yhat) / sigma_yhat`` (:func:`fit_class_stats`, :func:`data_limited_scores`).

Three layers, each usable on its own:

* :func:`spc_from_labels` reduces a label matrix (one column per query, the
  unscaled prediction first) to SPC: works on labels from any source.
* :func:`scaleup_labels` / :func:`scaleup_detect` build that matrix with one
  traced computation (scales vmapped), from ``(apply_fn, variables)`` or from
  any JAX-traceable ``images -> labels`` function.
* :func:`oracle_label_matrix` queries an arbitrary host-side black box
  (a remote API, a PyTorch model) one scale at a time.

References:
  Guo, Li, Chen, Wang, Jiang, Xia, Wang. "SCALE-UP: An Efficient Black-box
  Input-level Backdoor Detection via Analyzing Scaled Prediction
  Consistency". ICLR 2023. https://arxiv.org/abs/2302.03251
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from scaleup_jax.batching import map_batches
from scaleup_jax.validation import InputError, check_images, check_scales

DEFAULT_SCALES = (3.0, 5.0, 7.0, 9.0, 11.0)
METHODS = ('vmap', 'map')
# From this batch size up, ``lax.map`` over scales beat one vmapped batch on the
# 2-core development CPU (docs/performance.md, ``python -m eval.bench``).
MAP_MIN_BATCH_CPU = 32


def resolve_method(method: str, batch_size: int, backend: str | None = None) -> str:
  """``method``, or for ``'auto'`` the faster measured choice for this backend.

  ``'auto'`` is ``'map'`` on CPU for batches of at least
  :data:`MAP_MIN_BATCH_CPU` (measured with ``eval.bench``) and ``'vmap'``
  otherwise, including on accelerators, where one large batch is the usual
  win (not measured here; run ``eval.bench`` on yours).

  Args:
    method: ``'auto'``, ``'vmap'`` or ``'map'``.
    batch_size: images per detector call.
    backend: ``jax.default_backend()`` when None.

  Returns:
    ``'vmap'`` or ``'map'``.
  """
  if method == 'auto':
    backend = backend or jax.default_backend()
    return 'map' if backend == 'cpu' and batch_size >= MAP_MIN_BATCH_CPU else 'vmap'
  if method not in METHODS:
    raise InputError(f"unknown method {method!r}; expected 'auto' or one of {METHODS}")
  return method


def spc_from_labels(label_matrix):
  """Scaled prediction consistency from a label matrix.

  Args:
    label_matrix: integer array ``(B, 1 + S)``: column 0 holds the prediction
      on the unscaled input, column ``j`` the prediction at the ``j``-th scale.
      numpy or jax.

  Returns:
    float32 ``(B,)``: the fraction of the ``S`` scaled predictions equal to
    the unscaled one.

  Example:
    >>> spc_from_labels(np.array([[3, 3, 3, 1], [0, 1, 2, 0]]))
    array([0.6666667, 0.3333333], dtype=float32)
  """
  xp = jnp if isinstance(label_matrix, jax.Array) else np
  lm = xp.asarray(label_matrix)
  if lm.ndim != 2 or lm.shape[1] < 2:
    raise InputError(
        f'label matrix must have shape (B, 1 + S) with S >= 1; got {lm.shape}')
  return xp.mean(lm[:, 1:] == lm[:, :1], axis=1).astype(xp.float32)


def _check_chunk(chunk, method: str):
  """``chunk`` as an int (or None); it needs ``method`` 'map' or 'auto'."""
  if chunk is None:
    return None
  if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
    raise InputError(f'chunk must be a positive integer or None; got {chunk!r}')
  if method == 'vmap':
    raise InputError(f"chunk={chunk} splits method='map' (or 'auto'); got method 'vmap'")
  return int(chunk)


def _in_chunks(fn: Callable, x, chunk: int):
  """``fn`` over ``x`` in sub-batches of ``chunk`` rows (``lax.map``; the last zero-padded)."""
  b = x.shape[0]
  if b <= chunk:
    return fn(x)
  nc = -(-b // chunk)
  xp = jnp.pad(x, ((0, nc * chunk - b),) + ((0, 0),) * (x.ndim - 1))
  out = jax.lax.map(fn, xp.reshape(nc, chunk, *x.shape[1:]))
  return out.reshape(nc * chunk, *out.shape[2:])[:b]


def scaleup_labels(classify_fn: Callable, images, scales, method: str = 'vmap',
                   chunk: int | None = None):
  """Label matrix of a JAX-traceable classifier on amplified, clipped images.

  Args:
    classify_fn: maps images ``(B, H, W, C)`` to integer labels ``(B,)``;
      must be traceable by JAX.
    images: ``(B, H, W, C)`` float in [0, 1].
    scales: ``(S,)`` amplification factors, each >= 1.
    method: ``'vmap'`` runs the unscaled and all scaled copies as one batch of
      ``(1 + S) * B`` images; ``'map'`` runs them one after another with
      ``lax.map`` (less memory; on some CPUs faster, see ``eval.bench``);
      ``'auto'`` picks one for this batch size at trace time (:func:`resolve_method`).
    chunk: with ``'map'``, also split the batch into sub-batches of ``chunk``
      images (``lax.map`` over scales and sub-batches; padding dropped), so
      that each forward's activations fit the CPU caches: faster for small
      networks at large batches on CPU (docs/performance.md). Ignored when
      ``'auto'`` resolves to ``'vmap'``. None: whole batches.

  Returns:
    int32 ``(B, 1 + S)``: column 0 is ``C(x)``, column ``j`` is
    ``C(clip(scales[j-1] * x, 0, 1))``.
  """
  chunk = _check_chunk(chunk, method)
  method = resolve_method(method, images.shape[0])
  scales = jnp.asarray(scales, images.dtype)
  chex.assert_rank(images, 4)
  chex.assert_rank(scales, 1)
  factors = jnp.concatenate([jnp.ones((1,), images.dtype), scales])  # (1 + S,)

  def at_scale(n):
    if chunk is not None:
      return _in_chunks(lambda x: classify_fn(jnp.clip(n * x, 0.0, 1.0)).astype(jnp.int32),
                        images, chunk)
    return classify_fn(jnp.clip(n * images, 0.0, 1.0)).astype(jnp.int32)

  if method == 'vmap':
    labels = jax.vmap(at_scale)(factors)  # (1 + S, B)
  else:
    labels = jax.lax.map(at_scale, factors)
  chex.assert_shape(labels, (factors.shape[0], images.shape[0]))
  return labels.T


def predict_labels(apply_fn: Callable, variables, images):
  """int32 ``(B,)`` ``argmax`` of ``apply_fn(variables, images)``: the model's label (traceable).

  The one definition of "the label the model gives"; jit it with ``apply_fn``
  static (``train.predict_labels`` does, batched over host images).
  """
  return jnp.argmax(apply_fn(variables, images), axis=-1).astype(jnp.int32)


def classifier_from_logits(apply_fn: Callable, variables) -> Callable:
  """``images -> predict_labels(apply_fn, variables, images)``."""
  return lambda x: predict_labels(apply_fn, variables, x)


def scaleup_detect(apply_fn: Callable, variables, images, scales=DEFAULT_SCALES,
                   method: str = 'vmap', chunk: int | None = None):
  """SCALE-UP on one batch: original predictions and SPC.

  A pure function of its inputs; jit it once with ``apply_fn`` fixed, e.g. by
  :func:`make_detector`.

  Args:
    apply_fn: ``(variables, images (B, H, W, C)) -> logits (B, K)``.
    variables: the model's variables (any pytree ``apply_fn`` accepts).
    images: ``(B, H, W, C)`` float in [0, 1].
    scales: ``(S,)`` amplification factors >= 1.
    method: see :func:`scaleup_labels`.
    chunk: sub-batch size of ``'map'``; see :func:`scaleup_labels`.

  Returns:
    ``(preds, spc)``: int32 ``(B,)`` predictions on the unscaled images and
    float32 ``(B,)`` scaled prediction consistency.

  Example:
    >>> detect = make_detector(model_apply)            # jitted once
    >>> preds, spc = detect(variables, images)          # one device call
    >>> flagged = spc > 0.5
  """
  labels = scaleup_labels(classifier_from_logits(apply_fn, variables), images,
                          scales, method, chunk)
  return labels[:, 0], spc_from_labels(labels)


def make_detector(apply_fn: Callable, scales: Sequence[float] = DEFAULT_SCALES,
                  method: str = 'vmap', chunk: int | None = None) -> Callable:
  """Returns ``detect(variables, images) -> (preds, spc)``, jitted once.

  Scales are validated here and baked in as constants; variables and images
  are arguments, so the same compiled function serves every batch of the same
  shape (see :func:`detect_batched` for padding). ``chunk`` splits each
  batch of ``method='map'`` into sub-batches (:func:`scaleup_labels`).
  """
  scales = tuple(float(s) for s in check_scales(scales))
  resolve_method(method, 1)  # an unknown method fails here, not at the first call
  chunk = _check_chunk(chunk, method)

  def detect(variables, images):
    return scaleup_detect(apply_fn, variables, images, scales, method, chunk)

  return jax.jit(detect)


def make_label_detector(classify_fn: Callable, scales=DEFAULT_SCALES,
                        method: str = 'vmap') -> Callable:
  """Like :func:`make_detector` for a JAX-traceable ``images -> labels`` black box."""
  scales = tuple(float(s) for s in check_scales(scales))

  def detect(images):
    labels = scaleup_labels(classify_fn, images, scales, method)
    return labels[:, 0], spc_from_labels(labels)

  return jax.jit(detect)


def detect_batched(detect: Callable, images, batch_size: int = 256, variables=None,
                   image_shape=None, progress: bool = False, desc: str = 'SCALE-UP'):
  """Runs a detector over any number of images in fixed-size, padded batches.

  Args:
    detect: from :func:`make_detector` (then pass ``variables``) or
      :func:`make_label_detector`.
    images: ``(N, H, W, C)`` float in [0, 1]; validated first (rank, dtype,
      NaN, range), never clipped silently.
    batch_size: batch size; the last batch is padded and its padding dropped.
    variables: model variables for detectors built by :func:`make_detector`.
    image_shape: expected ``(H, W, C)``, if known.
    progress: show a progress bar.

  Returns:
    ``(preds, spc)`` as numpy arrays of shape ``(N,)``.
  """
  images = check_images(images, image_shape)
  if batch_size < 1:
    raise InputError(f'batch_size must be >= 1, got {batch_size}')
  fn = detect if variables is None else (lambda x: detect(variables, x))
  return map_batches(fn, images, batch_size, desc=desc, progress=progress)


def oracle_label_matrix(label_fn: Callable, images, scales=DEFAULT_SCALES,
                        batch_size: int | None = None) -> np.ndarray:
  """Label matrix from any host-side black box ``images -> labels``.

  This is the label-only adapter: ``label_fn`` may be a remote API, a PyTorch
  model or a numpy function. It is called once per scale (per batch), on
  ``float32`` numpy images in [0, 1].

  Args:
    label_fn: maps ``(b, H, W, C)`` float32 numpy images to ``(b,)`` integer
      labels.
    images: ``(N, H, W, C)`` float in [0, 1].
    scales: amplification factors >= 1.
    batch_size: images per call (all at once if None).

  Returns:
    int64 ``(N, 1 + S)`` label matrix for :func:`spc_from_labels`.
  """
  images = check_images(images)
  factors = np.concatenate([[1.0], check_scales(scales)]).astype(np.float32)
  n = len(images)
  bs = n if batch_size is None else int(batch_size)
  out = np.empty((n, len(factors)), np.int64)
  for start in range(0, n, bs):
    chunk = images[start : start + bs]
    for j, f in enumerate(factors):
      labels = np.asarray(label_fn(np.clip(f * chunk, 0.0, 1.0)))
      if labels.shape != (len(chunk),) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(
            f'label_fn must return integer labels of shape ({len(chunk)},); got '
            f'dtype {labels.dtype} shape {labels.shape}')
      out[start : start + len(chunk), j] = labels
  return out


# ---------------------------------------------------------------- data-limited


# The data-limited score forms of :func:`data_limited_scores` and the groupings of
# :func:`fit_class_stats`.
DATA_LIMITED_FORMS = ('standardised', 'literal', 'balanced', 'centred', 'scaled')
GROUP_BY = ('predicted', 'true')


@dataclasses.dataclass(frozen=True)
class ClassStats:
  """Per-class SPC statistics from a defender's benign images.

  Attributes:
    mean, std: ``(K,)`` per class (classes with fewer than 2 benign images
      fall back to the global values).
    count: ``(K,)`` benign images per class.
    global_mean, global_std: over all benign images (BackdoorBox's variant).
    min_std: floor applied to every standard deviation; see
      :func:`fit_class_stats`.
    balance: the factor ``lambda`` of the ``'balanced'`` form of
      :func:`data_limited_scores`: mean SPC of the benign images over the
      mean of ``mu_k / sigma_k`` at their classes.
    group_by: ``'predicted'`` or ``'true'``: which class of the benign
      images the statistics were grouped by.
  """

  mean: np.ndarray
  std: np.ndarray
  count: np.ndarray
  global_mean: float
  global_std: float
  min_std: float
  balance: float = 1.0
  group_by: str = 'predicted'


def fit_class_stats(spc, preds, num_classes: int, num_scales: int | None = None,
                    min_std: float | None = None, *, labels=None,
                    group_by: str = 'predicted') -> ClassStats:
  """Fits the data-limited normaliser on benign images.

  Test images are always looked up by their *predicted* class ``y_hat``
  (their true class is unknown); ``group_by`` only chooses how the defender's
  own images are grouped. The paper's Eq. 3 computes ``mu_i, sigma_i`` "based
  on samples X_i belonging to class i", i.e. by true class (``'true'``); its
  Sec. 4.3 then normalises "according to their predicted labels".
  ``'predicted'`` groups the defender images by what the model calls them, as
  the test images are.

  Args:
    spc: ``(M,)`` SPC of the defender's benign images.
    preds: ``(M,)`` their predicted labels.
    num_classes: K.
    num_scales: ``|S|``, used for the default ``min_std``.
    min_std: floor on every sigma. SPC takes values in ``{0, 1/|S|, ..., 1}``,
      so a class whose benign images all share one SPC has sigma = 0, and
      dividing by it would blow up every deviation. The default floor is half
      the SPC resolution, ``1 / (2 |S|)`` (0.1 for five scales), or 1e-3 if
      ``num_scales`` is not given.
    labels: ``(M,)`` true labels of the defender's images; required for
      ``group_by='true'``.
    group_by: ``'predicted'`` (default) or ``'true'``.

  Returns:
    A :class:`ClassStats`.

  Example:
    >>> st = fit_class_stats(np.array([0.2, 0.6, 0.8, 0.8]), np.array([0, 0, 1, 1]), 2,
    ...                      num_scales=5)
    >>> st.mean, st.std, round(st.balance, 6)  # sigma_1 = 0 floored; 0.6 / mean(2, 2, 8, 8)
    (array([0.4, 0.8], dtype=float32), array([0.2, 0.1], dtype=float32), 0.12)

  References:
    Guo et al. 2023, Sec. 4.3, Eq. 3 (data-limited setting).
  """
  if group_by not in GROUP_BY:
    raise InputError(f'unknown group_by {group_by!r}; expected one of {GROUP_BY}')
  spc = np.asarray(spc, np.float64)
  preds = np.asarray(preds)
  if spc.shape != preds.shape or spc.ndim != 1 or spc.size == 0:
    raise InputError(f'spc and preds must be non-empty and of equal shape (M,); got {spc.shape} and {preds.shape}')
  if preds.min() < 0 or preds.max() >= num_classes:
    raise InputError(f'predicted labels must lie in [0, {num_classes}); got range [{preds.min()}, {preds.max()}]')
  if group_by == 'true':
    if labels is None:
      raise InputError("group_by='true' needs the defender images' true labels (labels=None)")
    groups = np.asarray(labels)
    if groups.shape != spc.shape:
      raise InputError(f'labels must have the shape of spc {spc.shape}; got {groups.shape}')
    if groups.min() < 0 or groups.max() >= num_classes:
      raise InputError(f'true labels must lie in [0, {num_classes}); got range [{groups.min()}, {groups.max()}]')
  else:
    groups = preds
  groups = groups.astype(np.int64)
  if min_std is None:
    min_std = 0.5 / num_scales if num_scales else 1e-3
  if not min_std > 0:
    raise InputError(f'min_std must be > 0; got {min_std}')
  count = np.bincount(groups, minlength=num_classes)
  g_mean, g_std = float(spc.mean()), float(max(spc.std(), min_std))
  mean = np.full(num_classes, g_mean)
  std = np.full(num_classes, g_std)
  for k in np.flatnonzero(count >= 2):
    vals = spc[groups == k]
    mean[k] = vals.mean()
    std[k] = max(vals.std(), min_std)
  ratio = float(np.mean(mean[groups] / std[groups]))
  balance = g_mean / ratio if ratio > 0 else 1.0  # all mu_k = 0: the term is 0 anyway
  return ClassStats(mean.astype(np.float32), std.astype(np.float32), count,
                    g_mean, g_std, float(min_std), float(balance), group_by)


def data_limited_scores(spc, preds, stats: ClassStats, form: str = 'standardised'):
  """Data-limited SCALE-UP score of each image, normalised by its predicted class.

  The paper's Eq. 4 prints ``NSPC(x) = SPC(x) - mu_yhat / sigma_yhat`` and adds
  (Sec. 4.3): "for a more stable and effective performance, we automatically
  balance two terms in Eq. (4) to make their values at the same level". The
  printed formula is ambiguous, so each reading is a ``form``:

  * ``'standardised'`` (default): ``(SPC - mu_yhat) / sigma_yhat``, the
    batch-norm-style standardisation the paper says it is "inspired by
    (Ioffe & Szegedy, 2015)"; Eq. 4 with the parentheses restored.
  * ``'literal'``: ``SPC - mu_yhat / sigma_yhat``, Eq. 4 as printed.
  * ``'balanced'``: ``SPC - lambda * mu_yhat / sigma_yhat``, Eq. 4 with its two
    terms "automatically" balanced "to make their values at the same level":
    one ``lambda`` (``stats.balance``) scales the second term so that its
    mean over the defender's benign images equals theirs of the first.
  * ``'centred'``: ``SPC - mu_yhat``, the same balancing done per class (the
    level of ``SPC`` in class ``k`` is ``mu_k``, so the factor is
    ``sigma_k`` and the second term becomes ``mu_k``).
  * ``'scaled'``: ``SPC / sigma_yhat``.

  The sigma floor and the fallback of sparse classes to the global statistics
  (:func:`fit_class_stats`) apply to every form.

  Args:
    spc: ``(B,)`` SPC of the images to score (numpy or jax).
    preds: ``(B,)`` their predicted labels.
    stats: from :func:`fit_class_stats`.
    form: one of :data:`DATA_LIMITED_FORMS`.

  Returns:
    ``(B,)`` scores, higher = more likely poisoned (jax in, jax out).

  Example:
    >>> st = fit_class_stats(np.array([0.2, 0.6, 0.8, 0.8]), np.array([0, 0, 1, 1]), 2,
    ...                      num_scales=5)
    >>> x, y = np.array([0.6, 1.0]), np.array([0, 1])
    >>> [np.round(data_limited_scores(x, y, st, f), 6) for f in ('standardised', 'literal')]
    [array([1., 2.]), array([-1.4, -7. ])]

  References:
    Guo et al. 2023, Sec. 4.3, Eq. 4.
  """
  if form not in DATA_LIMITED_FORMS:
    raise InputError(f'unknown data-limited form {form!r}; expected one of {DATA_LIMITED_FORMS}')
  xp = jnp if isinstance(spc, jax.Array) else np
  mu = xp.asarray(stats.mean)[preds]
  sigma = xp.asarray(stats.std)[preds]
  if form == 'standardised':
    return (spc - mu) / sigma
  if form == 'literal':
    return spc - mu / sigma
  if form == 'balanced':
    return spc - stats.balance * (mu / sigma)
  if form == 'centred':
    return spc - mu
  return spc / sigma


def global_scores(spc, stats: ClassStats):
  """``(SPC - mu) / sigma`` with one global mean and std (BackdoorBox's variant).

  A strictly increasing map of SPC, so it never changes AUROC; kept for parity.
  """
  return (spc - stats.global_mean) / stats.global_std


CONSISTENCY_MODES = ('data-free', 'data-limited', 'data-limited-global')


def fit_consistency(defense_label_matrix, num_classes: int, *, labels=None,
                    group_by: str = 'predicted') -> ClassStats:
  """The data-limited statistics from the defender's label matrix ``(M, 1 + S)``.

  :func:`fit_class_stats` of its SPC and column-0 predictions (``num_scales``
  = S). The one data-limited fit: the ``scaleup`` detector and the experiments
  call it.
  """
  lm = np.asarray(defense_label_matrix)
  return fit_class_stats(spc_from_labels(lm), lm[:, 0], num_classes, num_scales=lm.shape[1] - 1,
                         labels=labels, group_by=group_by)


def consistency_scores(label_matrix, stats: ClassStats | None = None,
                       form: str = 'standardised') -> tuple[np.ndarray, dict]:
  """Every SCALE-UP score of a label matrix ``(N, 1 + S)``: the one scorer.

  Args:
    label_matrix: column 0 the unscaled label, then one column per query.
    stats: from :func:`fit_consistency`; None gives the data-free score only.
    form: the data-limited form (:data:`DATA_LIMITED_FORMS`).

  Returns:
    ``(preds (N,), {'data-free': SPC, 'data-limited': ..., 'data-limited-global': ...})``
    (the data-limited entries only with ``stats``).

  Example:
    >>> preds, s = consistency_scores(np.array([[1, 1, 2], [0, 0, 0]]))
    >>> preds.tolist(), s['data-free'].tolist()
    ([1, 0], [0.5, 1.0])
  """
  lm = np.asarray(label_matrix)
  preds, spc = lm[:, 0], np.asarray(spc_from_labels(lm))
  out = {'data-free': spc}
  if stats is not None:
    out['data-limited'] = data_limited_scores(spc, preds, stats, form)
    out['data-limited-global'] = global_scores(spc, stats)
  return preds, out


# ---------------------------------------------------------------- thresholds


def threshold_for_fpr(benign_scores, fpr: float) -> float:
  """Smallest threshold T with ``mean(benign_scores > T) <= fpr``.

  Flagging is ``score > T``. With discrete scores (SPC) the achieved rate can
  be below ``fpr``; :func:`rates_at_threshold` reports it.
  """
  s = np.sort(np.asarray(benign_scores, np.float64))
  if s.size == 0:
    raise InputError('need at least one benign score to pick a threshold')
  if not 0.0 <= fpr <= 1.0:
    raise InputError(f'target false-positive rate must be in [0, 1]; got {fpr}')
  candidates = np.unique(np.concatenate([[s[0] - 1.0], s]))
  # fraction strictly above each candidate
  above = 1.0 - np.searchsorted(s, candidates, side='right') / s.size
  ok = np.flatnonzero(above <= fpr + 1e-12)
  return float(candidates[ok[0]])


def rates_at_threshold(benign_scores, poisoned_scores, threshold: float) -> dict:
  """True- and false-positive rates of flagging ``score > threshold``."""
  return {
      'threshold': float(threshold),
      'tpr': float(np.mean(np.asarray(poisoned_scores) > threshold)),
      'fpr': float(np.mean(np.asarray(benign_scores) > threshold)),
  }


# ---------------------------------------------------------------- finer label-only scores
#
# Every score below reads one label matrix ``(N, 1 + F)`` from
# :func:`scaleup_labels` (column 0 the unscaled prediction, column ``j`` the
# prediction on ``clip(f_j x)``) on an ascending query grid ``F``, so one
# matrix on the union of the grids serves all of them (:func:`select_factors`).
# A score's cost is ``1 + |F|`` forward passes per image
# (:func:`score_forwards`), plus one per model for the saturation label.

# 2, 3, ..., 12: the paper's five scales and the six between and around them.
DENSE_SCALES = tuple(float(s) for s in range(2, 13))
LABEL_SCORES = ('spc', 'survival', 'spc_sat', 'data_limited', 'class_rank')
# What each score fits on the defender's benign images (None: nothing).
FITTED_SCORES = {'data_limited': 'per-class SPC mean and std (Eq. 3-4)',
                 'class_rank': 'per-class sorted base scores'}


def check_factors(factors) -> tuple:
  """Validates a query grid: non-empty, finite, every factor >= 1, strictly ascending.

  Returns:
    The factors as a tuple of Python floats.
  """
  arr = check_scales(factors).astype(np.float64)
  if np.any(np.diff(arr) <= 0):
    raise InputError(f'query factors must be strictly ascending (no repeats); got {arr.tolist()}')
  return tuple(float(f) for f in arr)


def query_grid(*factor_sets) -> tuple:
  """The ascending union of scale sets, e.g. ``query_grid(DEFAULT_SCALES, DENSE_SCALES)``."""
  merged = sorted({float(f) for fs in factor_sets for f in np.asarray(fs, np.float64).reshape(-1)})
  return check_factors(merged)


def make_label_matrix_fn(apply_fn: Callable, factors: Sequence[float],
                         method: str = 'vmap') -> Callable:
  """``labels(variables, images) -> (B, 1 + F)`` int32 label matrix, jitted once.

  The label-matrix form of :func:`make_detector` (same builder,
  :func:`scaleup_labels`), for the scores of this section.

  Args:
    apply_fn: ``(variables, images) -> logits``.
    factors: the ascending query grid (:func:`check_factors`).
    method: see :func:`scaleup_labels`.

  Example:
    >>> grid = query_grid(DEFAULT_SCALES, DENSE_SCALES)
    >>> lm = detect_batched(make_label_matrix_fn(model_apply, grid), images, 256, variables)
    >>> spc = label_score('spc', *select_factors(lm, grid, DEFAULT_SCALES))
  """
  factors = check_factors(factors)
  resolve_method(method, 1)  # an unknown method fails here, not at the first call

  def labels(variables, images):
    return scaleup_labels(classifier_from_logits(apply_fn, variables), images, factors, method)

  return jax.jit(labels)


def select_factors(label_matrix, factors: Sequence[float], wanted: Sequence[float]):
  """The columns of ``wanted`` factors from a label matrix on ``factors``.

  Args:
    label_matrix: ``(N, 1 + F)`` on the grid ``factors``.
    factors: its ``F`` factors.
    wanted: a subset of ``factors``.

  Returns:
    ``(sub_matrix (N, 1 + W), wanted_factors)``: column 0 kept.
  """
  lm = np.asarray(label_matrix)
  factors = np.asarray(factors, np.float64).reshape(-1)
  _check_matrix(lm, factors)
  cols = []
  for w in check_factors(wanted):
    hit = np.flatnonzero(np.abs(factors - w) <= 1e-6 * max(1.0, w))
    if hit.size == 0:
      raise InputError(f'factor {w:g} is not in the label matrix grid {factors.tolist()}')
    cols.append(int(hit[0]) + 1)
  return lm[:, [0] + cols], tuple(float(f) for f in factors[np.asarray(cols) - 1])


def _check_matrix(lm, factors) -> None:
  if lm.ndim != 2 or lm.shape[1] != 1 + len(factors):
    raise InputError(f'label matrix must have shape (N, 1 + {len(factors)}) for factors '
                     f'{list(np.asarray(factors).tolist())}; got {lm.shape}')


def score_forwards(factors: Sequence[float]) -> int:
  """Forward passes per image of a score read from a label matrix on ``factors``."""
  return 1 + len(check_factors(factors))


def survival_scale_from_labels(label_matrix, factors: Sequence[float]) -> np.ndarray:
  """The largest factor up to which the label holds, on an ascending grid.

  ``survival(x) = max{f_j : C(clip(f_i x)) = C(x) for every i <= j}``, and 1
  when the label already changes at the smallest factor. Finer than SPC where
  the grid is dense: two images with the same number of matches differ by
  *where* the first change happens.

  Args:
    label_matrix: ``(N, 1 + F)``.
    factors: the ``F`` ascending factors of its columns.

  Returns:
    float32 ``(N,)`` in ``{1} ∪ factors``.

  Example:
    >>> survival_scale_from_labels(np.array([[2, 2, 2, 5], [2, 5, 2, 2]]), (3., 5., 7.))
    array([5., 1.], dtype=float32)
  """
  factors = np.asarray(check_factors(factors), np.float32)
  lm = np.asarray(label_matrix)
  _check_matrix(lm, factors)
  held = np.cumprod(lm[:, 1:] == lm[:, :1], axis=1).astype(bool)  # label held up to column j
  depth = held.sum(axis=1)  # columns survived
  ladder = np.concatenate([[1.0], factors]).astype(np.float32)
  return ladder[depth]


def saturation_label(apply_fn: Callable, variables, image_shape=(32, 32, 3)) -> int:
  """The label of a saturated (all-ones) image: what large factors push every input to.

  One forward pass per model. For ``clip(n x)`` with large ``n`` every
  non-zero pixel goes to 1; on the CIFAR-10 zoo models that image is called
  airplane (class 0) and so are most amplified benign images.
  """
  ones = jnp.ones((1, *image_shape), jnp.float32)
  return int(predict_labels(apply_fn, variables, ones)[0])


def spc_sat_from_labels(label_matrix, saturation: int) -> np.ndarray:
  """SPC with ties broken by consistency away from the saturation class.

  ``SPC(x) + NSC(x) / (|S| + 1)`` with ``NSC`` the fraction of scales at which
  the label holds *and* is not the saturation label (see
  :func:`saturation_label`). The tie-break term is below one SPC step
  (``1/|S|``), so it never reorders images of different SPC; among images of
  equal SPC it puts those whose consistency is not explained by saturation
  first. Designed for the tie at SPC = 1 between poisoned images and benign
  images of the saturation class: it breaks it when the backdoor's target is
  not the saturation class, and (by construction) cannot when it is.

  Args:
    label_matrix: ``(N, 1 + S)``.
    saturation: the saturation label.

  Returns:
    float32 ``(N,)`` in ``[0, 1 + 1/(|S| + 1)]``.

  Example:
    >>> spc_sat_from_labels(np.array([[3, 3, 3], [0, 0, 0], [3, 3, 1]]), 0)
    array([1.3333334, 1.       , 0.6666667], dtype=float32)
  """
  lm = np.asarray(label_matrix)
  if lm.ndim != 2 or lm.shape[1] < 2:
    raise InputError(f'label matrix must have shape (B, 1 + S) with S >= 1; got {lm.shape}')
  match = lm[:, 1:] == lm[:, :1]
  nsc = np.mean(match & (lm[:, 1:] != int(saturation)), axis=1)
  return (np.mean(match, axis=1) + nsc / (lm.shape[1])).astype(np.float32)


def fit_label_score(name: str, label_matrix, factors: Sequence[float], num_classes: int,
                    *, saturation: int | None = None, base: str = 'spc',
                    min_count: int = 2, form: str = 'standardised', group_by: str = 'predicted',
                    labels=None) -> dict:
  """Fits what a label-only score needs from the defender's benign images.

  Args:
    name: one of :data:`LABEL_SCORES`.
    label_matrix: ``(M, 1 + F)`` of benign images (disjoint from the images the
      fitted score is later calibrated on, so that calibration scores stay
      exchangeable with fresh benign scores).
    factors: the grid of its columns.
    num_classes: K.
    saturation: the saturation label (for ``'spc_sat'`` and a ``class_rank``
      on it); see :func:`saturation_label`.
    base: the score ``class_rank`` ranks (``'spc'``, ``'survival'`` or
      ``'spc_sat'``).
    min_count: ``class_rank`` classes with fewer benign images use the pooled
      table of all classes.
    form, group_by, labels: of the ``data_limited`` score
      (:func:`data_limited_scores`, :func:`fit_class_stats`).

  Returns:
    A JSON-serialisable dict for :func:`label_score` (``{}`` for scores
    that fit nothing except the saturation label).
  """
  if name not in LABEL_SCORES:
    raise InputError(f'unknown label score {name!r}; expected one of {LABEL_SCORES}')
  params = {} if saturation is None else {'saturation': int(saturation)}
  if name not in FITTED_SCORES:
    return params
  lm = np.asarray(label_matrix)
  factors = check_factors(factors)
  _check_matrix(lm, factors)
  preds = lm[:, 0].astype(np.int64)
  if name == 'data_limited':
    stats = fit_class_stats(spc_from_labels(lm), preds, num_classes, num_scales=len(factors),
                            labels=labels, group_by=group_by)
    params['class_stats'] = {f.name: _plain(getattr(stats, f.name))
                             for f in dataclasses.fields(stats)}
    params['form'] = form
    return params
  if base not in ('spc', 'survival', 'spc_sat'):
    raise InputError(f"class_rank ranks 'spc', 'survival' or 'spc_sat'; got base {base!r}")
  params['base'] = base
  s = label_score(base, lm, factors, params)
  params['pooled'] = np.sort(s).tolist()
  params['tables'] = {str(k): np.sort(s[preds == k]).tolist() for k in range(num_classes)
                      if np.sum(preds == k) >= max(1, min_count)}
  return params


def _plain(v):
  if isinstance(v, np.ndarray):
    return v.tolist()
  if isinstance(v, np.generic):
    return v.item()
  return v


def class_rank_scores(base_scores, preds, params: dict) -> np.ndarray:
  """Class-conditional conformal surprise of a base score.

  ``-log10(p)`` with ``p = (1 + #{benign i of class yhat: s_i >= s}) / (1 + n_yhat)``,
  the fraction of the defender's benign images *predicted as the same class*
  that score at least as high (the rank form of the data-limited Eq. 3-4: it
  needs no sigma floor and no Gaussian reading of a discrete score).
  Classes with too few benign images use the pooled table.

  Args:
    base_scores: ``(N,)``.
    preds: ``(N,)`` predicted labels.
    params: from :func:`fit_label_score` (``'tables'``, ``'pooled'``).

  Returns:
    float32 ``(N,)`` >= 0, higher = more unusual for its predicted class.
  """
  s = np.asarray(base_scores, np.float64)
  preds = np.asarray(preds)
  out = np.empty(s.shape, np.float64)
  tables = params['tables']
  for k in np.unique(preds):
    table = np.asarray(tables.get(str(int(k)), params['pooled']), np.float64)
    idx = preds == k
    # #{t >= s} with a float32-level tolerance (scores share their code path).
    ge = table.size - np.searchsorted(table, s[idx] - 1e-6 * np.maximum(1.0, np.abs(s[idx])),
                                      side='left')
    out[idx] = -np.log10((1.0 + ge) / (1.0 + table.size))
  return out.astype(np.float32)


def label_score(name: str, label_matrix, factors: Sequence[float], params: dict | None = None):
  """One of :data:`LABEL_SCORES` from a label matrix on ``factors``.

  * ``'spc'``: SCALE-UP's SPC (paper Eq. 1-2) on the grid's factors (the
    paper's five by default, or a denser grid).
  * ``'survival'``: :func:`survival_scale_from_labels`.
  * ``'spc_sat'``: :func:`spc_sat_from_labels` (needs ``params['saturation']``).
  * ``'data_limited'``: :func:`data_limited_scores` of SPC with the class
    statistics in ``params['class_stats']`` (paper Eq. 3-4).
  * ``'class_rank'``: :func:`class_rank_scores` of ``params['base']``.

  Args:
    name: the score.
    label_matrix: ``(N, 1 + F)``.
    factors: its ascending factors.
    params: from :func:`fit_label_score` when the score needs any.

  Returns:
    float32 ``(N,)``, higher = more likely poisoned.
  """
  params = params or {}
  lm = np.asarray(label_matrix)
  factors = check_factors(factors)
  _check_matrix(lm, factors)
  if name == 'spc':
    return spc_from_labels(lm)
  if name == 'survival':
    return survival_scale_from_labels(lm, factors)
  need = {'spc_sat': 'saturation', 'data_limited': 'class_stats', 'class_rank': 'tables'}
  if name not in LABEL_SCORES:
    raise InputError(f'unknown label score {name!r}; expected one of {LABEL_SCORES}')
  if need[name] not in params:
    raise InputError(f'score {name!r} needs {need[name]!r} in its params (fit_label_score); '
                     f'got {sorted(params)}')
  if name == 'spc_sat':
    return spc_sat_from_labels(lm, params['saturation'])
  if name == 'data_limited':
    raw = params['class_stats']
    stats = ClassStats(**{f.name: (np.asarray(raw[f.name]) if isinstance(raw[f.name], list)
                                   else raw[f.name])
                          for f in dataclasses.fields(ClassStats) if f.name in raw})
    return np.asarray(data_limited_scores(spc_from_labels(lm), lm[:, 0], stats,
                                          params.get('form', 'standardised')), np.float32)
  base = label_score(params['base'], lm, factors, params)
  return class_rank_scores(base, lm[:, 0], params)
