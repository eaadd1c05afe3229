"""Common image corruptions in JAX, five severities each (for TeCo).

Every corruption is ``fn(key, images, params) -> (S, B, H, W, C)``: the
``(B, H, W, C)`` images in [0, 1] under each of the ``S`` severity parameters
``params`` (static Python values, by default the five of :data:`SEVERITIES`).
Parameters are those of Hendrycks & Dietterich's CIFAR-10-C generator
(``make_cifar_c.py``), meant for 32x32 images. Random corruptions draw their
noise for all severities in one call (independent per image and severity,
except glass blur's displacements and fog's octaves, which are drawn once and
shared by the severities); this keeps the compiled program small.

Implemented (12 of the 15 corruptions TeCo uses; the paper calls the
``imagecorruptions`` package):

  gaussian_noise   clip(x + N(0, c^2))
  shot_noise       clip(Poisson(c x) / c) (see poisson_sample)
  impulse_noise    salt-and-pepper on a fraction c of the values
  defocus_blur     disk kernel of radius r, then 3x3 Gaussian of sigma s
  glass_blur       Gaussian blur, local pixel shuffling, Gaussian blur (approx.)
  motion_blur      one-sided Gaussian streak at a random angle in [-45, 45] deg
  zoom_blur        (x + sum_z zoom(x, z)) / (Z + 1) for z = 1, 1.01, ..., z_max
  fog              additive fractal noise, renormalised (approx.)
  brightness       HSV value + c
  contrast         (x - mean) * c + mean, per channel
  pixelate         box downscale by c and box upscale back
  jpeg_compression JPEG-like round trip at quality c (no chroma subsampling)

Approximations (documented deviations): glass blur replaces the sequential
random swaps of neighbouring pixels by a parallel random displacement of
every pixel within ``delta`` (a gather; the same locality, not a
permutation); fog replaces the diamond-square plasma fractal by a sum of
bilinearly upsampled uniform noise octaves with amplitude decaying by the
same ``wibbledecay``; motion blur replaces ImageMagick's kernel with
``radius + 1`` bilinear taps weighted ``exp(-t^2 / 2 sigma^2)``. Snow, frost
(needs image files) and elastic transform are not implemented.

References:
  Hendrycks, Dietterich. "Benchmarking Neural Network Robustness to Common
  Corruptions and Perturbations". ICLR 2019. https://arxiv.org/abs/1903.12261
"""

from __future__ import annotations

import math
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from scaleup_jax.baselines import image_ops
from scaleup_jax.validation import InputError


def _stack(fn, x, params):
  """``(S, B, H, W, C)`` from a deterministic per-severity ``fn(x, c)``."""
  return jnp.stack([fn(x, c) for c in params])


def _param_array(params, x):
  """Severity parameters as an array broadcastable against ``(S, B, H, W, C)``."""
  return jnp.asarray(params, x.dtype).reshape(-1, 1, 1, 1, 1)


def gaussian_noise(key, x, params):
  c = _param_array(params, x)
  z = jax.random.normal(key, (len(params), *x.shape), x.dtype)
  return jnp.clip(x[None] + c * z, 0.0, 1.0)


POISSON_EXACT_MAX_RATE = 12.0
_POISSON_TERMS = 40


def poisson_sample(key, lam):
  """Poisson samples of rate ``lam`` (any shape, float) for any PRNG implementation.

  Rates up to :data:`POISSON_EXACT_MAX_RATE` are sampled exactly by inverting
  the CDF with one uniform (40 terms: the tail beyond is below 1e-9); larger
  rates use ``round(lam + sqrt(lam) z)`` clipped at 0, the normal
  approximation (error of the CDF below about 0.05 / sqrt(lam)).
  ``jax.random.poisson`` is not used because it only supports threefry keys.
  """
  k_u, k_z = jax.random.split(key)
  u = jax.random.uniform(k_u, lam.shape, lam.dtype)
  small = jnp.minimum(lam, POISSON_EXACT_MAX_RATE)

  def body(k, carry):
    count, pmf, cdf = carry
    count = count + (u > cdf)
    pmf = pmf * small / (k + 1.0)
    return count, pmf, cdf + pmf

  p0 = jnp.exp(-small)
  exact, _, _ = jax.lax.fori_loop(0, _POISSON_TERMS, body, (jnp.zeros_like(lam), p0, p0))
  z = jax.random.normal(k_z, lam.shape, lam.dtype)
  approx = jnp.maximum(jnp.round(lam + jnp.sqrt(lam) * z), 0.0)
  return jnp.where(lam <= POISSON_EXACT_MAX_RATE, exact, approx)


def shot_noise(key, x, params):
  c = _param_array(params, x)
  lam = x[None] * c
  return jnp.clip(poisson_sample(key, lam) / c, 0.0, 1.0)


def impulse_noise(key, x, params):
  c = _param_array(params, x)
  k_hit, k_salt = jax.random.split(key)
  u = jax.random.uniform(k_hit, (len(params), *x.shape), x.dtype)
  salt = jax.random.bernoulli(k_salt, 0.5, u.shape)
  return jnp.where(u < c, salt.astype(x.dtype), x[None])


def defocus_kernel(radius: float, alias_blur: float) -> np.ndarray:
  """Aliased disk of ``radius`` convolved with a 3x3 Gaussian of ``alias_blur``."""
  r = int(math.ceil(radius))
  t = np.arange(-r, r + 1, dtype=np.float64)
  yy, xx = np.meshgrid(t, t, indexing='ij')
  disk = (yy**2 + xx**2 <= radius**2).astype(np.float64)
  disk /= disk.sum()
  g = np.exp(-0.5 * (np.arange(-1, 2) / alias_blur) ** 2)
  g = np.outer(g, g) / np.outer(g, g).sum()
  out = np.zeros((2 * r + 3, 2 * r + 3))
  for i in range(3):
    for j in range(3):
      out[i : i + 2 * r + 1, j : j + 2 * r + 1] += g[i, j] * disk
  return out.astype(np.float32)


def defocus_blur(key, x, params):
  del key
  blur = lambda im, c: image_ops.depthwise_conv(im, defocus_kernel(*c), 'reflect')
  return jnp.clip(_stack(blur, x, params), 0.0, 1.0)


def glass_blur(key, x, params):
  b, h, w, _ = x.shape
  max_iter = max(int(c[2]) for c in params)
  # One uniform draw per (iteration, image, pixel, axis), shared by the
  # severities and scaled to each severity's delta.
  u = jax.random.uniform(key, (max_iter, b, 2, h, w))
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  out = []
  for sigma, delta, iterations in params:
    y = image_ops.gaussian_blur(x, sigma)
    for it in range(int(iterations)):
      d = jnp.floor(u[it] * (2 * delta + 1)).astype(jnp.int32) - delta
      r = jnp.clip(rows + d[:, 0], 0, h - 1)
      q = jnp.clip(cols + d[:, 1], 0, w - 1)
      y = jax.vmap(lambda im, rr, qq: im[rr, qq])(y, r, q)
    out.append(image_ops.gaussian_blur(y, sigma))
  return jnp.clip(jnp.stack(out), 0.0, 1.0)


def motion_blur(key, x, params):
  b, h, w, _ = x.shape
  angles = jnp.deg2rad(jax.random.uniform(key, (len(params), b), minval=-45.0, maxval=45.0))
  rows = jnp.arange(h, dtype=jnp.float32)[:, None]
  cols = jnp.arange(w, dtype=jnp.float32)[None, :]
  out = []
  for (radius, sigma), a in zip(params, angles):
    t = np.arange(radius + 1, dtype=np.float32)
    wts = np.exp(-0.5 * (t / sigma) ** 2)
    wts /= wts.sum()
    # (B, T, H, W) source coordinates of every tap, one gather for all taps.
    dy = -jnp.sin(a)[:, None, None, None] * t[None, :, None, None]
    dx = -jnp.cos(a)[:, None, None, None] * t[None, :, None, None]
    shape = (b, len(t), h, w)
    taps = image_ops.bilinear_gather(x, jnp.broadcast_to(rows + dy, shape),
                                     jnp.broadcast_to(cols + dx, shape), 'nearest')  # (B,T,H,W,C)
    out.append(jnp.einsum('t,bthwc->bhwc', jnp.asarray(wts), taps))
  return jnp.clip(jnp.stack(out), 0.0, 1.0)


def zoom_blur(key, x, params):
  del key
  h, w = x.shape[1:3]
  out = []
  for zooms in params:
    # One gather for all zooms: (Z, H, W) source coordinates, shared by the batch.
    rows, cols = zip(*(image_ops.affine_coords(h, w, zoom=float(z)) for z in zooms))
    taps = image_ops.bilinear_gather(x, np.stack(rows)[None], np.stack(cols)[None],
                                     'nearest')  # (B, Z, H, W, C)
    out.append((x + taps.sum(axis=1)) / (len(zooms) + 1))
  return jnp.clip(jnp.stack(out), 0.0, 1.0)


def fractal_noise(key, batch: int, h: int, w: int, decays):
  """``(len(decays), batch, h, w)`` noise in [0, 1] from shared random octaves.

  Octave ``o`` is a ``2^(o+1)``-square uniform grid, bilinearly upsampled, with
  amplitude ``decay ** -o``; the grids are drawn once and shared by all decays.
  """
  octaves = max(1, int(math.ceil(math.log2(max(h, w)))))
  n_max = 2**octaves
  grids = jax.random.uniform(key, (octaves, batch, n_max, n_max), minval=-1.0, maxval=1.0)
  layers = []
  for o in range(octaves):
    n = 2 ** (o + 1)
    mh = jnp.asarray(image_ops.linear_matrix(h, n))
    mw = jnp.asarray(image_ops.linear_matrix(w, n))
    layers.append(jnp.einsum('hi,bij,wj->bhw', mh, grids[o, :, :n, :n], mw))
  layers = jnp.stack(layers)  # (O, B, H, W)
  amps = jnp.asarray([[d ** -o for o in range(octaves)] for d in decays], jnp.float32)
  total = jnp.einsum('so,obhw->sbhw', amps, layers)
  lo = total.min(axis=(2, 3), keepdims=True)
  hi = total.max(axis=(2, 3), keepdims=True)
  return (total - lo) / jnp.maximum(hi - lo, 1e-6)


def fog(key, x, params):
  strength = _param_array([c[0] for c in params], x)
  noise = fractal_noise(key, x.shape[0], x.shape[1], x.shape[2], [c[1] for c in params])
  max_val = x.max(axis=(1, 2, 3), keepdims=True)[None]
  return jnp.clip((x[None] + strength * noise[..., None]) * max_val / (max_val + strength),
                  0.0, 1.0)


def brightness(key, x, params):
  del key
  return _stack(image_ops.adjust_value, x, params)


def contrast(key, x, params):
  del key
  c = _param_array(params, x)
  means = x.mean(axis=(1, 2), keepdims=True)[None]
  return jnp.clip((x[None] - means) * c + means, 0.0, 1.0)


def pixelate(key, x, params):
  del key
  h, w = x.shape[1:3]

  def one(im, c):
    small = image_ops.area_resize(im, (max(1, int(h * c)), max(1, int(w * c))))
    return image_ops.area_resize(small, (h, w))

  return _stack(one, x, params)


def jpeg_compression(key, x, params):
  del key
  return _stack(lambda im, c: image_ops.jpeg_like(im, int(c)), x, params)


CORRUPTIONS: dict[str, Callable] = {
    'gaussian_noise': gaussian_noise,
    'shot_noise': shot_noise,
    'impulse_noise': impulse_noise,
    'defocus_blur': defocus_blur,
    'glass_blur': glass_blur,
    'motion_blur': motion_blur,
    'zoom_blur': zoom_blur,
    'fog': fog,
    'brightness': brightness,
    'contrast': contrast,
    'pixelate': pixelate,
    'jpeg_compression': jpeg_compression,
}

# CIFAR-10-C severities 1..5 (Hendrycks & Dietterich, make_cifar_c.py).
SEVERITIES: dict[str, tuple] = {
    'gaussian_noise': (0.04, 0.06, 0.08, 0.09, 0.10),
    'shot_noise': (500, 250, 100, 75, 50),
    'impulse_noise': (0.01, 0.02, 0.03, 0.05, 0.07),
    'defocus_blur': ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    'glass_blur': ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    'motion_blur': ((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)),
    'zoom_blur': tuple(tuple(float(z) for z in np.arange(1.0, zmax, 0.01))
                       for zmax in (1.06, 1.11, 1.16, 1.21, 1.26)),
    'fog': ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    'brightness': (0.05, 0.1, 0.15, 0.2, 0.3),
    'contrast': (0.75, 0.5, 0.4, 0.3, 0.15),
    'pixelate': (0.95, 0.9, 0.85, 0.75, 0.65),
    'jpeg_compression': (80, 65, 58, 50, 40),
}
NUM_SEVERITIES = 5


def check_name(name: str) -> None:
  if name not in CORRUPTIONS:
    raise InputError(f'unknown corruption {name!r}; expected one of {sorted(CORRUPTIONS)}')


def corrupt_all(key, images, name: str, params=None):
  """All severities of corruption ``name``: ``(S, B, H, W, C)`` from ``(B, H, W, C)``.

  Args:
    key: PRNG key (random corruptions draw their noise for all severities in
      one call).
    images: ``(B, H, W, C)`` in [0, 1].
    name: one of :data:`CORRUPTIONS`.
    params: severity parameters (default ``SEVERITIES[name]``, five entries).
  """
  check_name(name)
  params = SEVERITIES[name] if params is None else tuple(params)
  out = CORRUPTIONS[name](key, images, params)
  chex.assert_shape(out, (len(params), *images.shape))
  return out


def corrupt(key, images, name: str, severity: int):
  """Corruption ``name`` at one ``severity`` (1..5) of ``(B, H, W, C)`` images."""
  check_name(name)
  if not 1 <= severity <= NUM_SEVERITIES:
    raise InputError(f'severity must lie in 1..{NUM_SEVERITIES}; got {severity}')
  return corrupt_all(key, images, name, (SEVERITIES[name][severity - 1],))[0]
