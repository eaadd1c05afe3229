"""The detector interface shared by SCALE-UP and the baselines.

A :class:`Detector` wraps one jit-compiled, pure core

    core(variables, images, key, aux) -> (preds, scores)

* ``variables``: the suspect model's variables (whatever ``apply_fn`` takes).
* ``images``: ``(B, H, W, C)`` float in [0, 1].
* ``key``: PRNG key for detectors with random queries (ignored by the
  deterministic ones); by default the detector's own key, so a call is a pure
  function of ``(variables, images)``.
* ``aux``: the detector's fitted arrays (STRIP's overlays, IBD-PSC's
  amplification factors, the Frequency network's parameters), passed as an
  argument rather than baked into the compiled program.
* ``preds``: int32 ``(B,)`` predictions of the unmodified model.
* ``scores``: float32 ``(B,)``; higher means more likely poisoned, for every
  detector.

``detector(variables, images)`` has the same call signature and outputs as the
function returned by :func:`scaleup_jax.scaleup.make_detector`, so
:func:`scaleup_jax.scaleup.detect_batched` batches and pads it unchanged (one
compilation per batch shape).

A detector with more than one score (SCALE-UP: data-free, data-limited) or a
step fitted on the defender's benign images declares it instead of being
special-cased by its callers. Its core may return any per-image array
``outputs`` (SCALE-UP: the label matrix ``(B, 1 + F)``); then

* ``head(outputs) -> (preds, scores)`` gives the default score,
* ``fit(defense_outputs, defense_labels, num_classes) -> state`` learns what
  the fitted modes need from the defender's images (``fitted_modes``),
* ``score(outputs, state) -> (preds, {mode: scores})`` gives every mode
  (``score_modes``); modes in ``fitted_modes`` only when ``state`` is given.

Evaluation code runs ``raw`` batched, then ``fit`` and ``score``, the same for
every registered detector (``scaleup_jax.evaluate``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from scaleup_jax.scaleup import predict_labels  # noqa: F401  (the baselines' label)
from scaleup_jax.validation import InputError, check_images

# What a detector needs from the suspect model.
ACCESS = ('labels', 'probabilities', 'parameters', 'none')
# What a detector's core returns per image (Detector.outputs).
OUTPUTS = ('scores', 'label_matrix')


@dataclasses.dataclass(frozen=True, eq=False)
class Detector:
  """A compiled input-level backdoor detector.

  Attributes:
    name: registry name.
    core: jitted ``(variables, images, key, aux) -> (preds, scores)``.
    aux: pytree of arrays the core needs besides the model (may be None).
    key: default PRNG key of the random queries.
    needs: access to the suspect model the *score* needs, one of
      :data:`ACCESS`: ``'labels'`` (hard-label black box), ``'probabilities'``
      (softmax outputs), ``'parameters'`` (white box) or ``'none'`` (the score
      looks at the input only; the model is queried just for ``preds``).
    model_forwards: forward passes of the suspect model per scored image,
      counting the unmodified prediction.
    detector_forwards: forward passes of an auxiliary network per image
      (Frequency's classifier), for throughput accounting.
    config: the resolved hyper-parameters (JSON-serialisable), including
      anything fitted on the benign set such as IBD-PSC's layer choice.
    modes: names of the detector's scores; ``()`` means one, named ``name``.
    head: ``outputs -> (preds, scores)`` when the core returns something else
      than ``(preds, scores)``; None otherwise.
    fit_fn: ``(defense_outputs, defense_labels, num_classes) -> state`` for the
      ``fitted_modes``; None if the detector fits nothing after it is built.
    score_fn: ``(outputs, state) -> (preds, {mode: scores})``; None: the single
      score of ``head`` (or of the core).
    fitted_modes: the modes that need ``state``.
    describe_state: ``state -> dict`` of JSON values for a result file.
    outputs: ``'scores'`` (the core returns ``(preds, scores)``) or
      ``'label_matrix'`` (``(B, 1 + F)`` labels on the grid ``config['grid']``,
      which :mod:`scaleup_jax.calibration` turns into calibrated label-only scores).
  """

  name: str
  core: Callable
  aux: Any
  key: Any
  needs: str
  model_forwards: int
  detector_forwards: int = 0
  config: dict = dataclasses.field(default_factory=dict)
  modes: tuple = ()
  head: Callable | None = None
  fit_fn: Callable | None = None
  score_fn: Callable | None = None
  fitted_modes: tuple = ()
  describe_state: Callable | None = None
  outputs: str = 'scores'

  def __post_init__(self):
    if self.needs not in ACCESS:
      raise ValueError(f'needs must be one of {ACCESS}; got {self.needs!r}')
    if self.outputs not in OUTPUTS:
      raise ValueError(f'outputs must be one of {OUTPUTS}; got {self.outputs!r}')
    unknown = set(self.fitted_modes) - set(self.score_modes)
    if unknown:
      raise ValueError(f'fitted_modes {sorted(unknown)} are not modes of {self.name!r}')

  def raw(self, variables, images, key=None):
    """The core's per-image outputs for one batch (``(preds, scores)`` unless ``head`` is set)."""
    return self.core(variables, images, self.key if key is None else key, self.aux)

  def __call__(self, variables, images, key=None):
    """``(preds, scores)`` for one batch; see the module docstring."""
    out = self.raw(variables, images, key)
    return out if self.head is None else self.head(out)

  @property
  def score_modes(self) -> tuple:
    """The names of this detector's scores (its entries in a result's ``detection``)."""
    return tuple(self.modes) or (self.name,)

  def fit(self, defense_outputs, defense_labels, num_classes: int):
    """What the fitted modes learn from the defender's images (None if nothing)."""
    if self.fit_fn is None:
      return None
    labels = None if defense_labels is None else np.asarray(defense_labels)
    return self.fit_fn(defense_outputs, labels, int(num_classes))

  def score(self, outputs, state=None) -> tuple[np.ndarray, dict]:
    """``(preds (N,), {mode: scores (N,)})`` from outputs of :meth:`raw` (any batch size).

    Modes in ``fitted_modes`` are present only when ``state`` (from
    :meth:`fit`) is given.
    """
    if self.score_fn is not None:
      return self.score_fn(outputs, state)
    preds, scores = outputs if self.head is None else self.head(outputs)
    return np.asarray(preds), {self.name: np.asarray(scores)}

  @property
  def forwards_per_image(self) -> int:
    """Model plus auxiliary forward passes per image (throughput accounting)."""
    return self.model_forwards + self.detector_forwards




def labels_of_stack(apply_fn: Callable, variables, stack, chunk: int | None = None):
  """Predicted labels of a stack of batches ``(Q, B, H, W, C)`` -> ``(Q, B)``.

  ``chunk`` query batches are evaluated at once (``lax.map`` with
  ``batch_size``), so at most ``chunk * B`` images are in flight; ``None``
  runs all ``Q * B`` as one batch.
  """
  chex.assert_rank(stack, 5)
  q, b = stack.shape[:2]
  if chunk is None or chunk >= q:
    flat = stack.reshape(q * b, *stack.shape[2:])
    return predict_labels(apply_fn, variables, flat).reshape(q, b)
  return jax.lax.map(lambda x: predict_labels(apply_fn, variables, x), stack,
                     batch_size=int(chunk))


def inconsistency(labels, preds):
  """Fraction of the ``Q`` query labels ``(Q, B)`` that differ from ``preds`` ``(B,)``."""
  chex.assert_rank(labels, 2)
  chex.assert_shape(preds, (labels.shape[1],))
  return jnp.mean(labels != preds[None, :], axis=0).astype(jnp.float32)


def entropy_bits(probs, axis: int = -1):
  """Shannon entropy in bits, ``-sum p log2 p`` with ``0 log 0 = 0``.

  Example:
    >>> float(entropy_bits(jnp.array([0.5, 0.25, 0.25])))
    1.5
  """
  p = jnp.asarray(probs)
  logp = jnp.where(p > 0, jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0)
  return -jnp.sum(p * logp, axis=axis)


def fast_key(key):
  """An ``'rbg'`` PRNG key derived from ``key`` (of any implementation).

  XLA's RngBitGenerator compiles to a far smaller program than threefry, which
  matters for detectors that draw many random tensors (TeCo's corruptions,
  Frequency's synthetic triggers). Draws are deterministic for a given key and
  backend, but CPU and GPU give different streams.
  """
  return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl='rbg')


def check_benign(name: str, benign_images, image_shape=None, min_count: int = 1) -> np.ndarray:
  """Validates the defender's benign images for detector ``name``."""
  if benign_images is None:
    raise InputError(f'{name} needs the defender\'s benign images (benign_images=...); got None')
  arr = check_images(benign_images, image_shape)
  if len(arr) < min_count:
    raise InputError(f'{name} needs at least {min_count} benign images; got {len(arr)}')
  return arr


def check_positive_int(name: str, value) -> int:
  """``int(value)`` if it is an integer >= 1, else InputError naming ``name``."""
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise InputError(f'{name} must be an integer >= 1; got {value!r}')
  return int(value)


def default_key(key):
  """The key to store: a typed key from an int seed, else ``key`` unchanged."""
  if key is None:
    raise InputError('a PRNG key is required (key=jax.random.key(seed))')
  if isinstance(key, (int, np.integer)):
    return jax.random.key(int(key))
  return key
