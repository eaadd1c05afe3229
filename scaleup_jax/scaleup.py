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


def scaleup_labels(classify_fn: Callable, images, scales, method: str = 'vmap'):
  """Label matrix of a JAX-traceable classifier on amplified, clipped images.

  Args:
    classify_fn: maps images ``(B, H, W, C)`` to integer labels ``(B,)``;
      must be traceable by JAX.
    images: ``(B, H, W, C)`` float in [0, 1].
    scales: ``(S,)`` amplification factors, each >= 1.
    method: ``'vmap'`` runs the unscaled and all scaled copies as one batch of
      ``(1 + S) * B`` images; ``'map'`` runs them one after another with
      ``lax.map`` (less memory; on some CPUs faster, see ``eval.bench``).

  Returns:
    int32 ``(B, 1 + S)``: column 0 is ``C(x)``, column ``j`` is
    ``C(clip(scales[j-1] * x, 0, 1))``.
  """
  if method not in METHODS:
    raise InputError(f'unknown method {method!r}; expected one of {METHODS}')
  scales = jnp.asarray(scales, images.dtype)
  chex.assert_rank(images, 4)
  chex.assert_rank(scales, 1)
  factors = jnp.concatenate([jnp.ones((1,), images.dtype), scales])  # (1 + S,)

  def at_scale(n):
    return classify_fn(jnp.clip(n * images, 0.0, 1.0)).astype(jnp.int32)

  if method == 'vmap':
    labels = jax.vmap(at_scale)(factors)  # (1 + S, B)
  else:
    labels = jax.lax.map(at_scale, factors)
  chex.assert_shape(labels, (factors.shape[0], images.shape[0]))
  return labels.T


def classifier_from_logits(apply_fn: Callable, variables) -> Callable:
  """``images -> argmax(apply_fn(variables, images))``."""
  return lambda x: jnp.argmax(apply_fn(variables, x), axis=-1)


def scaleup_detect(apply_fn: Callable, variables, images, scales=DEFAULT_SCALES,
                   method: str = 'vmap'):
  """SCALE-UP on one batch: original predictions and SPC.

  A pure function of its inputs; jit it once with ``apply_fn`` fixed, e.g. by
  :func:`make_detector`.

  Args:
    apply_fn: ``(variables, images (B, H, W, C)) -> logits (B, K)``.
    variables: the model's variables (any pytree ``apply_fn`` accepts).
    images: ``(B, H, W, C)`` float in [0, 1].
    scales: ``(S,)`` amplification factors >= 1.
    method: see :func:`scaleup_labels`.

  Returns:
    ``(preds, spc)``: int32 ``(B,)`` predictions on the unscaled images and
    float32 ``(B,)`` scaled prediction consistency.

  Example:
    >>> detect = make_detector(model_apply)            # jitted once
    >>> preds, spc = detect(variables, images)          # one device call
    >>> flagged = spc > 0.5
  """
  labels = scaleup_labels(classifier_from_logits(apply_fn, variables), images,
                          scales, method)
  return labels[:, 0], spc_from_labels(labels)


def make_detector(apply_fn: Callable, scales: Sequence[float] = DEFAULT_SCALES,
                  method: str = 'vmap') -> Callable:
  """Returns ``detect(variables, images) -> (preds, spc)``, jitted once.

  Scales are validated here and baked in as constants; variables and images
  are arguments, so the same compiled function serves every batch of the same
  shape (see :func:`detect_batched` for padding).
  """
  scales = tuple(float(s) for s in check_scales(scales))
  if method not in METHODS:
    raise InputError(f'unknown method {method!r}; expected one of {METHODS}')

  def detect(variables, images):
    return scaleup_detect(apply_fn, variables, images, scales, method)

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


@dataclasses.dataclass(frozen=True)
class ClassStats:
  """Per-class SPC statistics from a defender's benign images.

  Attributes:
    mean, std: ``(K,)`` per predicted class (classes with fewer than 2
      benign images fall back to the global values).
    count: ``(K,)`` benign images per predicted class.
    global_mean, global_std: over all benign images (BackdoorBox's variant).
    min_std: floor applied to every standard deviation; see
      :func:`fit_class_stats`.
  """

  mean: np.ndarray
  std: np.ndarray
  count: np.ndarray
  global_mean: float
  global_std: float
  min_std: float


def fit_class_stats(spc, preds, num_classes: int, num_scales: int | None = None,
                    min_std: float | None = None) -> ClassStats:
  """Fits the data-limited normaliser on benign images.

  Args:
    spc: ``(M,)`` SPC of the defender's benign images.
    preds: ``(M,)`` their predicted labels (the statistics are indexed by the
      *predicted* class, as at test time the true label is unknown).
    num_classes: K.
    num_scales: ``|S|``, used for the default ``min_std``.
    min_std: floor on every sigma. SPC takes values in ``{0, 1/|S|, ..., 1}``,
      so a class whose benign images all share one SPC has sigma = 0, and
      dividing by it would blow up every deviation. The default floor is half
      the SPC resolution, ``1 / (2 |S|)`` (0.1 for five scales), or 1e-3 if
      ``num_scales`` is not given.

  Returns:
    A :class:`ClassStats`.

  References:
    Guo et al. 2023, Section 3.3 (data-limited setting).
  """
  spc = np.asarray(spc, np.float64)
  preds = np.asarray(preds)
  if spc.shape != preds.shape or spc.ndim != 1 or spc.size == 0:
    raise InputError(f'spc and preds must be non-empty and of equal shape (M,); got {spc.shape} and {preds.shape}')
  if preds.min() < 0 or preds.max() >= num_classes:
    raise InputError(f'predicted labels must lie in [0, {num_classes}); got range [{preds.min()}, {preds.max()}]')
  if min_std is None:
    min_std = 0.5 / num_scales if num_scales else 1e-3
  count = np.bincount(preds, minlength=num_classes)
  g_mean, g_std = float(spc.mean()), float(max(spc.std(), min_std))
  mean = np.full(num_classes, g_mean)
  std = np.full(num_classes, g_std)
  for k in np.flatnonzero(count >= 2):
    vals = spc[preds == k]
    mean[k] = vals.mean()
    std[k] = max(vals.std(), min_std)
  return ClassStats(mean.astype(np.float32), std.astype(np.float32), count,
                    g_mean, g_std, float(min_std))


def data_limited_scores(spc, preds, stats: ClassStats):
  """``(SPC - mu_yhat) / sigma_yhat`` per image (numpy or jax inputs, ``(B,)``)."""
  xp = jnp if isinstance(spc, jax.Array) else np
  mean, std = xp.asarray(stats.mean), xp.asarray(stats.std)
  return (spc - mean[preds]) / std[preds]


def global_scores(spc, stats: ClassStats):
  """``(SPC - mu) / sigma`` with one global mean and std (BackdoorBox's variant).

  A strictly increasing map of SPC, so it never changes AUROC; kept for parity.
  """
  return (spc - stats.global_mean) / stats.global_std


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
