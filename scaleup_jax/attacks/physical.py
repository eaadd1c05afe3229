"""PhysicalBA: training-time physical distortions of poisoned images.

The physical backdoor attack keeps an ordinary BadNets-style patch trigger
(:func:`scaleup_jax.poison.badnets_trigger`) but trains on poisoned images that
were randomly distorted, so that the backdoor survives the colour and
geometry changes of photographing a printed trigger. This module provides
those distortions as batched, jittable JAX functions on float images
``(B, H, W, C)`` in pixel space [0, 1]:

* :func:`color_jitter`: torchvision ``ColorJitter(brightness, contrast)``;
* :func:`random_affine`: torchvision ``RandomAffine(degrees, translate,
  scale)`` (rotation, integer translation and scaling about the centre);
* :func:`physical_transform`: jitter then affine, and
  :func:`physical_batch_transform`, a training-batch hook.

Default parameters are those of BackdoorBox's CIFAR-10 PhysicalBA example
(``tests/test_PhysicalBA.py``): ``ColorJitter(brightness=0.2, contrast=0.2)``
and ``RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.8, 0.9))``.
That example also puts ``RandomHorizontalFlip()`` first; it is left out here
because the project's training augmentation (``train.augment``) already flips
every image at random.

Deviations from torchvision, on purpose: the jitter operations always run in
the order brightness then contrast (torchvision draws a random order per
image); the affine warp is bilinear (torchvision's ``RandomAffine`` default is
nearest neighbour); pixels mapped from outside the image are 0 in both.

References:
  Li, Zhai, Wu, Jiang, Li & Xia, "Backdoor Attack in the Physical World",
  ICLR 2021 Workshop on Robust and Reliable Machine Learning in the Real
  World. https://arxiv.org/abs/2104.02361
  BackdoorBox ``core/attacks/PhysicalBA.py`` and ``tests/test_PhysicalBA.py``
  (https://github.com/THUYimingLi/BackdoorBox).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scaleup_jax.baselines.image_ops import bilinear_gather
from scaleup_jax.validation import InputError, check_image_batch

# BackdoorBox tests/test_PhysicalBA.py, CIFAR-10 and GTSRB sections.
DEFAULT_BRIGHTNESS = 0.2
DEFAULT_CONTRAST = 0.2
DEFAULT_DEGREES = 10.0
DEFAULT_TRANSLATE = (0.1, 0.1)
DEFAULT_SCALE = (0.8, 0.9)

# ITU-R 601 luma weights of torchvision's rgb_to_grayscale.
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _factor_range(value, name: str) -> tuple[float, float]:
  """torchvision's ColorJitter range: ``v -> (max(0, 1 - v), 1 + v)`` or a ``(lo, hi)`` pair."""
  if isinstance(value, (int, float, np.integer, np.floating)):
    if value < 0:
      raise InputError(f'{name} must be >= 0; got {value}')
    return max(0.0, 1.0 - float(value)), 1.0 + float(value)
  lo, hi = (float(v) for v in value)
  if not 0.0 <= lo <= hi:
    raise InputError(f'{name} range must satisfy 0 <= lo <= hi; got {tuple(value)}')
  return lo, hi


def _per_image(factor, b: int, dtype):
  return jnp.broadcast_to(jnp.asarray(factor, dtype), (b,))[:, None, None, None]


def adjust_brightness(images, factor):
  """``clip(images * factor, 0, 1)`` (torchvision ``adjust_brightness``).

  Args:
    images: ``(B, H, W, C)`` in [0, 1].
    factor: scalar or ``(B,)`` non-negative factors (1 is the identity).

  Returns:
    ``(B, H, W, C)`` in [0, 1].
  """
  check_image_batch(images)
  f = _per_image(factor, images.shape[0], images.dtype)
  return jnp.clip(images * f, 0.0, 1.0)


def adjust_contrast(images, factor):
  """Blends every image with its mean grey level (torchvision ``adjust_contrast``).

  ``clip(factor * x + (1 - factor) * m, 0, 1)`` where ``m`` is the mean over
  the image of its grayscale ``0.299 R + 0.587 G + 0.114 B`` (the image itself
  for one channel).

  Args:
    images: ``(B, H, W, C)`` in [0, 1] with ``C`` 1 or 3.
    factor: scalar or ``(B,)`` non-negative factors (1 is the identity, 0
      gives a uniform grey image).

  Returns:
    ``(B, H, W, C)`` in [0, 1].
  """
  check_image_batch(images)
  c = images.shape[-1]
  if c == 3:
    gray = jnp.einsum('bhwc,c->bhw', images, jnp.asarray(_GRAY_WEIGHTS, images.dtype))
  elif c == 1:
    gray = images[..., 0]
  else:
    raise InputError(f'contrast needs 1 or 3 channels; got {c}')
  mean = jnp.mean(gray, axis=(1, 2))[:, None, None, None]
  f = _per_image(factor, images.shape[0], images.dtype)
  return jnp.clip(f * images + (1.0 - f) * mean, 0.0, 1.0)


def color_jitter(key: jax.Array, images, brightness=DEFAULT_BRIGHTNESS,
                 contrast=DEFAULT_CONTRAST):
  """Random per-image brightness then contrast, like torchvision ``ColorJitter``.

  Args:
    key: PRNG key.
    images: ``(B, H, W, C)`` in [0, 1] (``C`` 1 or 3).
    brightness: ``b >= 0`` (factor ``U[max(0, 1 - b), 1 + b]``) or a
      ``(lo, hi)`` factor range. 0.2 in BackdoorBox's example.
    contrast: same for the contrast factor. 0.2 in BackdoorBox's example.

  Returns:
    ``(B, H, W, C)`` in [0, 1]. The order is fixed (brightness first), unlike
    torchvision's random order; each step is clipped to [0, 1] like torchvision.
    Jittable.

  References:
    Li et al., "Backdoor Attack in the Physical World", 2021; BackdoorBox
    ``tests/test_PhysicalBA.py``.
  """
  check_image_batch(images)
  return _color_jitter(key, images, _factor_range(brightness, 'brightness'),
                       _factor_range(contrast, 'contrast'))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _color_jitter(key, images, b_range, c_range):
  kb, kc = jax.random.split(key)
  n = images.shape[0]
  fb = jax.random.uniform(kb, (n,), jnp.float32, *b_range)
  fc = jax.random.uniform(kc, (n,), jnp.float32, *c_range)
  out = adjust_brightness(images, fb)
  return adjust_contrast(out, fc).astype(images.dtype)

def affine_coords_batch(h: int, w: int, angle_deg, shift, zoom):
  """Per-image source coordinates of a rotation/zoom/shift about the centre.

  The batched, traceable counterpart of
  :func:`scaleup_jax.baselines.image_ops.affine_coords` (same convention:
  counter-clockwise as displayed, ``shift = (dy, dx)`` in pixels, ``zoom > 1``
  enlarges): output pixel ``p`` reads the input at
  ``c + R^-1 (p - c - shift) / zoom`` with ``c = ((H - 1) / 2, (W - 1) / 2)``.

  Args:
    h, w: image size.
    angle_deg: ``(B,)`` rotation angles in degrees.
    shift: ``(B, 2)`` translations ``(dy, dx)``.
    zoom: ``(B,)`` positive scale factors.

  Returns:
    ``(rows, cols)``, each float32 ``(B, H, W)``.
  """
  angle = jnp.deg2rad(jnp.asarray(angle_deg, jnp.float32))[:, None, None]
  shift = jnp.asarray(shift, jnp.float32)
  zoom = jnp.asarray(zoom, jnp.float32)[:, None, None]
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                       indexing='ij')
  y = (yy[None] - cy - shift[:, 0, None, None]) / zoom
  x = (xx[None] - cx - shift[:, 1, None, None]) / zoom
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  return cy + cos * y + sin * x, cx - sin * y + cos * x


def _affine_ranges(degrees, translate, scale):
  """Validated ``(degree range, (tx, ty), scale range)`` of :func:`random_affine`."""
  if isinstance(degrees, (int, float, np.integer, np.floating)):
    if degrees < 0:
      raise InputError(f'degrees must be >= 0; got {degrees}')
    d_lo, d_hi = -float(degrees), float(degrees)
  else:
    d_lo, d_hi = (float(v) for v in degrees)
    if d_lo > d_hi:
      raise InputError(f'degrees range must satisfy lo <= hi; got {tuple(degrees)}')
  tx, ty = (float(v) for v in translate)
  if not (0.0 <= tx <= 1.0 and 0.0 <= ty <= 1.0):
    raise InputError(f'translate fractions must lie in [0, 1]; got {tuple(translate)}')
  s_lo, s_hi = (float(v) for v in scale)
  if not 0.0 < s_lo <= s_hi:
    raise InputError(f'scale range must satisfy 0 < lo <= hi; got {tuple(scale)}')
  return (d_lo, d_hi), (tx, ty), (s_lo, s_hi)


def random_affine(key: jax.Array, images, degrees=DEFAULT_DEGREES,
                  translate: Sequence[float] = DEFAULT_TRANSLATE,
                  scale: Sequence[float] = DEFAULT_SCALE):
  """Random per-image rotation, translation and scaling, like torchvision ``RandomAffine``.

  Parameters are drawn as in ``RandomAffine.get_params``: angle
  ``U[-degrees, degrees]``, translation ``round(U[-tx W, tx W])`` columns and
  ``round(U[-ty H, ty H])`` rows (whole pixels), scale ``U[lo, hi]``, no shear.
  The warp is about the image centre, bilinear, and 0 outside the image.

  Args:
    key: PRNG key.
    images: ``(B, H, W, C)`` in [0, 1].
    degrees: ``d >= 0`` (angles in ``[-d, d]``) or a ``(lo, hi)`` range.
      10 in BackdoorBox's example.
    translate: ``(tx, ty)`` maximal translation as fractions of the width and
      height, each in [0, 1]. ``(0.1, 0.1)`` in BackdoorBox's example.
    scale: ``(lo, hi)`` scale range, ``0 < lo <= hi``. ``(0.8, 0.9)`` in
      BackdoorBox's example (the content always shrinks).

  Returns:
    ``(B, H, W, C)`` in [0, 1]. Jittable.

  References:
    Li et al., "Backdoor Attack in the Physical World", 2021; BackdoorBox
    ``tests/test_PhysicalBA.py``.
  """
  check_image_batch(images)
  return _random_affine(key, images, *_affine_ranges(degrees, translate, scale))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _random_affine(key, images, d_range, t_frac, s_range):
  (d_lo, d_hi), (tx, ty), (s_lo, s_hi) = d_range, t_frac, s_range
  b, h, w, _ = images.shape
  ka, kx, ky, ks = jax.random.split(key, 4)
  angle = jax.random.uniform(ka, (b,), jnp.float32, d_lo, d_hi)
  dx = jnp.round(jax.random.uniform(kx, (b,), jnp.float32, -tx * w, tx * w))
  dy = jnp.round(jax.random.uniform(ky, (b,), jnp.float32, -ty * h, ty * h))
  zoom = jax.random.uniform(ks, (b,), jnp.float32, s_lo, s_hi)
  rows, cols = affine_coords_batch(h, w, angle, jnp.stack([dy, dx], -1), zoom)
  out = bilinear_gather(images, rows, cols, mode='constant')
  return jnp.clip(out, 0.0, 1.0).astype(images.dtype)

def physical_transform(key: jax.Array, images, brightness=DEFAULT_BRIGHTNESS,
                       contrast=DEFAULT_CONTRAST, degrees=DEFAULT_DEGREES,
                       translate: Sequence[float] = DEFAULT_TRANSLATE,
                       scale: Sequence[float] = DEFAULT_SCALE):
  """PhysicalBA's distortion: :func:`color_jitter` then :func:`random_affine`.

  Args:
    key: PRNG key.
    images: ``(B, H, W, C)`` in [0, 1].
    brightness, contrast: see :func:`color_jitter`.
    degrees, translate, scale: see :func:`random_affine`.

  Returns:
    ``(B, H, W, C)`` in [0, 1]. Jittable (parameters are static).
  """
  kj, ka = jax.random.split(key)
  out = color_jitter(kj, images, brightness, contrast)
  return random_affine(ka, out, degrees, translate, scale)


def physical_batch_transform(brightness=DEFAULT_BRIGHTNESS, contrast=DEFAULT_CONTRAST,
                             degrees=DEFAULT_DEGREES,
                             translate: Sequence[float] = DEFAULT_TRANSLATE,
                             scale: Sequence[float] = DEFAULT_SCALE,
                             apply_to: Sequence[int] = (1,)) -> Callable:
  """A training-batch hook applying :func:`physical_transform` to poisoned rows.

  Args:
    brightness, contrast, degrees, translate, scale: see
      :func:`physical_transform`.
    apply_to: the flag values whose rows are distorted; ``(1,)`` (poisoned
      only) by default. BackdoorBox's ``PhysicalBA`` datasets also distort
      clean training images (``(0, 1)``).

  Returns:
    ``transform(key, images, flags)``: ``images`` ``(B, H, W, C)`` float,
    ``flags`` ``(B,)`` int (0 = clean, 1 = poisoned); rows whose flag is in
    ``apply_to`` are distorted, the others returned unchanged. Jittable.
  """
  apply_to = tuple(int(v) for v in apply_to)
  if not apply_to:
    raise InputError('apply_to must name at least one flag value; got ()')
  _factor_range(brightness, 'brightness')  # fail early, outside any trace
  _factor_range(contrast, 'contrast')
  _affine_ranges(degrees, translate, scale)

  def transform(key, images, flags):
    if flags.shape != images.shape[:1]:
      raise InputError(f'flags must have shape (B,) = {images.shape[:1]}; got {flags.shape}')
    out = physical_transform(key, images, brightness, contrast, degrees, translate, scale)
    sel = jnp.isin(flags, jnp.asarray(apply_to, flags.dtype))
    return jnp.where(sel[:, None, None, None], out, images)

  return transform
