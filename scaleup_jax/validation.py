"""Input checks with messages that name the offending value."""

from __future__ import annotations

import numpy as np


class InputError(ValueError):
  """A value the user gave that cannot be used: a flag, option, file, array shape or name.

  The message names the offending value. The entry points print it as one line
  with exit code 2 (:func:`scaleup_jax.cli.friendly_errors`); a plain
  ``ValueError`` is left for internal invariants, which keep their traceback.
  It subclasses ``ValueError``, so ``except ValueError`` still catches it.
  """


def check_image_batch(images) -> None:
  """The part of :func:`check_images` that needs no values: rank 4 and a float dtype.

  Works on traced arrays too (inside ``jax.jit``, where values are unknown), so
  jitted image transforms check their input with it; host code that has the
  values calls :func:`check_images`, which starts with this.

  Args:
    images: a ``(B, H, W, C)`` array (numpy, jax or a tracer).

  Raises:
    InputError: wrong rank, or a dtype that is not floating point.

  Example:
    >>> check_image_batch(np.zeros((2, 32, 32, 3), np.float32))  # passes silently
    >>> try:
    ...   check_image_batch(np.zeros((2, 32, 32, 3), np.uint8))
    ... except InputError as e:
    ...   print(e)
    images must be floating point in [0, 1]; got dtype uint8 (uint8 images: divide by 255 first)
  """
  shape = tuple(np.shape(images))
  if len(shape) != 4:
    raise InputError(f'images must have shape (B, H, W, C); got rank {len(shape)} shape {shape}')
  dtype = np.dtype(images.dtype) if hasattr(images, 'dtype') else np.asarray(images).dtype
  if not (np.issubdtype(dtype, np.floating) or dtype.name == 'bfloat16'):
    hint = ' (uint8 images: divide by 255 first)' if dtype == np.uint8 else ''
    raise InputError(f'images must be floating point in [0, 1]; got dtype {dtype}{hint}')


def check_images(images, image_shape=None) -> np.ndarray:
  """Validates a batch of pixel-space images and returns it as float32 numpy.

  Args:
    images: array-like ``(B, H, W, C)`` of floats in [0, 1].
    image_shape: expected ``(H, W, C)``, if known.

  Returns:
    ``images`` as a float32 numpy array (no copy when it already is one).

  Raises:
    InputError: wrong rank or shape, an empty batch, non-float dtype, NaN/inf,
      or values outside [0, 1] (these are reported, never clipped silently).
  """
  arr = np.asarray(images)
  if arr.ndim != 4:
    raise InputError(f'images must have shape (B, H, W, C); got rank {arr.ndim} shape {arr.shape}')
  if image_shape is not None and tuple(arr.shape[1:]) != tuple(image_shape):
    raise InputError(f'images have shape {arr.shape[1:]} per image; the model expects {tuple(image_shape)}')
  if arr.shape[0] == 0:
    raise InputError('images is empty (batch size 0)')
  check_image_batch(arr)
  bad = ~np.isfinite(arr)
  if bad.any():
    raise InputError(f'images contain {int(bad.sum())} NaN/inf values (first at index {tuple(int(i) for i in np.argwhere(bad)[0])})')
  lo, hi = float(arr.min()), float(arr.max())
  if lo < 0.0 or hi > 1.0:
    raise InputError(f'images must lie in [0, 1]; got values in [{lo:.4g}, {hi:.4g}]')
  return arr.astype(np.float32, copy=False)


def check_scales(scales) -> np.ndarray:
  """Validates a SCALE-UP scale set: non-empty, finite, every scale >= 1."""
  arr = np.asarray(scales, dtype=np.float64).reshape(-1) if np.size(scales) else np.zeros((0,))
  if arr.size == 0:
    raise InputError('the scale set is empty; SCALE-UP needs at least one scale (default 3,5,7,9,11)')
  if not np.all(np.isfinite(arr)):
    raise InputError(f'scales must be finite; got {arr.tolist()}')
  if np.any(arr < 1):
    raise InputError(f'scales must be >= 1 (amplification); got {arr.tolist()}')
  return arr.astype(np.float32)
