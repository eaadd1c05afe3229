"""The compiled detector of the firewall: one executable per bucket size, built at start-up.

An :class:`Engine` holds the model and, for each batch size of a small set of
*buckets* (default 1, 8, 32), an ahead-of-time compiled executable of
:func:`scaleup.make_label_matrix_fn` (``jax.jit(...).lower(...).compile()``).
A batch of ``n`` images runs on the smallest bucket ``>= n``, padded with
:func:`batching.pad_to` and its padding dropped. A compiled executable refuses
any other shape (``TypeError``) instead of tracing again, so no request can
trigger a compile; :func:`compile_count` counts XLA compilations of the
process (a ``jax.monitoring`` listener) so that tests and ``/metrics`` can
show it stays flat while serving.

The tie coins of the calibrated randomised threshold
(:mod:`scaleup_jax.calibration`) are drawn per image from a NumPy Philox
generator seeded with ``SeedSequence([seed, *h])``, ``h`` the SHA-256 of the
image's float32 pixels and shape as eight 32-bit words (:func:`tie_coin`): the
same image under the same seed always gets the same decision, so resubmitting
a tied input does not redraw its coin, and distinct images get independent
coins.

Example:
  >>> model = load_model('zoo/cifar10_badnets_resnet20')
  >>> engine = Engine(model, scales=(3, 5, 7, 9, 11), buckets=(1, 8, 32))
  >>> lm = engine.label_matrix(images)          # (N, 1 + 5), no compile
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scaleup_jax import batching
from scaleup_jax import scaleup
from scaleup_jax.validation import InputError

DEFAULT_BUCKETS = (1, 8, 32)
_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
_compiles = 0
_compiles_lock = threading.Lock()
_listening = False


def _on_event(name: str, duration: float, **kwargs) -> None:
  del duration, kwargs
  global _compiles
  if name == _COMPILE_EVENT:
    with _compiles_lock:
      _compiles += 1


def compile_count() -> int:
  """XLA backend compilations in this process since the first :class:`Engine` was built."""
  with _compiles_lock:
    return _compiles


def _listen() -> None:
  global _listening
  with _compiles_lock:
    if _listening:
      return
    _listening = True
  jax.monitoring.register_event_duration_secs_listener(_on_event)


@dataclasses.dataclass(frozen=True)
class Model:
  """What the firewall serves: a classifier in pixel space [0, 1].

  Attributes:
    apply_fn: ``(variables, images (B, H, W, C)) -> logits (B, K)``.
    variables: its variables (fingerprinted against the calibration).
    image_shape: ``(H, W, C)`` the model takes.
    num_classes: ``K``.
    name: shown in ``/healthz`` and the review page.
    class_names: optional names of the ``K`` labels.
    path: the run directory, if loaded from one.
    dataset: the tfds dataset it was trained on (its test split calibrates).
  """

  apply_fn: Callable
  variables: Any
  image_shape: tuple
  num_classes: int
  name: str
  class_names: tuple | None = None
  path: Path | None = None
  dataset: str = 'cifar10'


def load_model(ckpt, data_dir=None) -> Model:
  """A :class:`Model` from a run directory (checked by :func:`checkpoint.load_run`).

  Args:
    ckpt: run directory, or ``zoo/NAME`` (:func:`paths.resolve_ckpt`).
    data_dir: tfds directory to read class names from (optional; names fall
      back to ``'0'..'K-1'``).

  Raises:
    checkpoint.CheckpointError, integrity.IntegrityError: a missing or
      corrupt run directory.
  """
  from scaleup_jax import checkpoint, data, paths
  path = paths.resolve_ckpt(ckpt)
  run = checkpoint.load_run(path)
  shape = tuple(int(s) for s in run.config.get('image_shape', (32, 32, 3)))
  k = int(run.variables['params']['head']['bias'].shape[0])
  try:
    names = tuple(data.class_names(str(run.config.get('dataset', 'cifar10')), data_dir, k))
  except Exception:  # class names are cosmetic; a missing dataset must not stop serving
    names = None
  dataset = str(run.config.get('dataset', 'cifar10'))
  return Model(run.apply_fn, run.variables, shape, k, Path(run.path).name, names, Path(run.path),
               dataset)


def check_buckets(buckets: Sequence[int]) -> tuple:
  """Validates bucket sizes: non-empty, integers >= 1; returns them sorted, unique."""
  try:
    out = sorted({int(b) for b in buckets})
  except (TypeError, ValueError):
    raise InputError(f'bucket sizes must be integers; got {list(buckets)!r}') from None
  if not out or out[0] < 1:
    raise InputError(f'bucket sizes must be a non-empty set of integers >= 1; got {list(buckets)!r}')
  return tuple(out)


def pixel_hash(image: np.ndarray) -> bytes:
  """SHA-256 of an image's float32 pixels (C order) and shape: what the model sees."""
  a = np.ascontiguousarray(image, np.float32)
  h = hashlib.sha256(repr(a.shape).encode())
  h.update(a.tobytes())
  return h.digest()


def tie_coin(seed: int, digest: bytes) -> float:
  """The tie coin in [0, 1) of the image with :func:`pixel_hash` ``digest`` under ``seed``.

  Example:
    >>> tie_coin(0, pixel_hash(np.zeros((32, 32, 3), np.float32)))  # always the same value
  """
  words = [int(w) for w in np.frombuffer(digest, np.uint32)]
  seq = np.random.SeedSequence([int(seed), *words])
  return float(np.random.Generator(np.random.Philox(seq)).random())


class Engine:
  """Label matrices of one model on a fixed scale set, from executables compiled at start-up.

  Args:
    model: the :class:`Model`.
    scales: the scale set of the calibrated detector; ``()`` serves the model
      without detection (the label matrix is the prediction alone, ``(B, 1)``).
    buckets: batch sizes compiled now; a batch larger than the largest is an
      error (the batcher never builds one).
    method: ``'vmap'``, ``'map'`` or ``'auto'`` (:func:`scaleup.resolve_method`,
      chosen per bucket).
    seed: of the tie coins.

  Example:
    >>> engine = Engine(model, (3., 5., 7., 9., 11.), (1, 8))
    >>> engine.label_matrix(np.zeros((3, 32, 32, 3), np.float32)).shape
    (3, 6)
  """

  def __init__(self, model: Model, scales: Sequence[float], buckets: Sequence[int] = DEFAULT_BUCKETS,
               method: str = 'auto', seed: int = 0):
    _listen()
    self.model = model
    self.scales = scaleup.check_factors(scales) if len(scales) else ()
    self.buckets = check_buckets(buckets)
    self.seed = int(seed)
    self.detection = bool(self.scales)
    t0 = time.perf_counter()
    n0 = compile_count()
    self._exe, self.methods = {}, {}
    for b in self.buckets:
      spec = jax.ShapeDtypeStruct((b, *model.image_shape), jnp.float32)
      if self.detection:
        method = scaleup.resolve_method(method, b)
        fn = scaleup.make_label_matrix_fn(model.apply_fn, self.scales, method)
      else:
        method = 'none'
        predict = lambda v, x: scaleup.predict_labels(model.apply_fn, v, x)[:, None]
        fn = jax.jit(predict)
      self.methods[b] = method
      self._exe[b] = fn.lower(model.variables, spec).compile()
    self.compile_seconds = time.perf_counter() - t0
    self.compiles_at_start = compile_count() - n0

  @property
  def max_batch(self) -> int:
    return self.buckets[-1]

  @property
  def columns(self) -> int:
    return 1 + len(self.scales)

  def bucket_for(self, n: int) -> int:
    """The smallest compiled bucket that holds ``n`` images."""
    for b in self.buckets:
      if b >= n:
        return b
    raise InputError(f'batch of {n} images exceeds the largest compiled bucket {self.max_batch}')

  def label_matrix(self, images: np.ndarray) -> np.ndarray:
    """int32 ``(n, 1 + S)``: column 0 the prediction, then one column per scale.

    Args:
      images: float32 ``(n, H, W, C)`` in [0, 1], ``1 <= n <= max_batch``
        (already validated by the caller; not checked again here).
    """
    n = len(images)
    b = self.bucket_for(n)
    out = self._exe[b](self.model.variables, batching.pad_to(np.asarray(images, np.float32), b))
    return np.asarray(out)[:n]

  def coins(self, hashes: Sequence[bytes]) -> np.ndarray:
    """float64 ``(n,)`` in [0, 1): the :func:`tie_coin` of each image, from its pixel hash."""
    return np.array([tie_coin(self.seed, d) for d in hashes], np.float64)

  def describe(self) -> dict:
    return {'model': self.model.name, 'image_shape': list(self.model.image_shape),
            'num_classes': self.model.num_classes, 'scales': list(self.scales),
            'buckets': list(self.buckets), 'methods': {str(k): v for k, v in self.methods.items()},
            'detection': self.detection, 'compile_seconds': round(self.compile_seconds, 2)}
