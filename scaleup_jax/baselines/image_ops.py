"""Image operations in JAX shared by the baseline detectors.

Every function takes and returns float images of shape ``(B, H, W, C)`` in
pixel space [0, 1] (random ones take a PRNG ``key`` first). Static
hyper-parameters (kernel sizes, qualities) are Python numbers, so a function
traces once per setting; the images are the only traced inputs.

Contents: the orthonormal DCT-II as a matrix product (:func:`dct_matrix`,
:func:`dct2`, :func:`idct2`, block-wise :func:`block_dct2`), filters
(:func:`gaussian_blur`, :func:`box_filter`, :func:`median_filter`,
:func:`depthwise_conv`), resampling (:func:`area_resize`,
:func:`bilinear_gather`, :func:`affine_warp`, :func:`shrink_pad`), colour (:func:`rgb_to_ycbcr`,
:func:`adjust_value`) and a JPEG-like quantiser (:func:`jpeg_like`).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from scaleup_jax.validation import InputError

# ----------------------------------------------------------------------- DCT


def dct_matrix(n: int) -> np.ndarray:
  """The orthonormal DCT-II matrix ``D`` of size ``(n, n)``.

  ``D[k, m] = a_k cos(pi (2m + 1) k / (2n))`` with ``a_0 = sqrt(1/n)`` and
  ``a_k = sqrt(2/n)``; ``D @ x`` equals ``scipy.fft.dct(x, norm='ortho')`` and
  ``D.T`` is its inverse.

  Example:
    >>> np.allclose(dct_matrix(4) @ dct_matrix(4).T, np.eye(4))
    True
  """
  if n < 1:
    raise InputError(f'DCT size must be >= 1; got {n}')
  k = np.arange(n)[:, None]
  m = np.arange(n)[None, :]
  d = np.cos(np.pi * (2 * m + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
  d[0] /= np.sqrt(2.0)
  return d.astype(np.float32)


def dct2(images):
  """2-D orthonormal DCT-II over the spatial axes of ``(B, H, W, C)`` images.

  Equals ``scipy.fft.dctn(x, axes=(1, 2), norm='ortho')``; computed as
  ``D_H X D_W^T`` with :func:`dct_matrix`.
  """
  chex.assert_rank(images, 4)
  dh = jnp.asarray(dct_matrix(images.shape[1]))
  dw = jnp.asarray(dct_matrix(images.shape[2]))
  return jnp.einsum('kh,bhwc,lw->bklc', dh, images, dw,
                    precision=jax.lax.Precision.HIGHEST)


def idct2(coeffs):
  """Inverse of :func:`dct2`."""
  chex.assert_rank(coeffs, 4)
  dh = jnp.asarray(dct_matrix(coeffs.shape[1]))
  dw = jnp.asarray(dct_matrix(coeffs.shape[2]))
  return jnp.einsum('kh,bklc,lw->bhwc', dh, coeffs, dw,
                    precision=jax.lax.Precision.HIGHEST)


def block_dct2(images, block: int = 8, inverse: bool = False):
  """Blockwise orthonormal 2-D DCT (or its inverse) on ``block x block`` tiles.

  Args:
    images: ``(B, H, W, C)`` with ``H`` and ``W`` multiples of ``block``.
    block: tile size (8 for JPEG).
    inverse: apply the inverse transform.

  Returns:
    ``(B, H, W, C)``: tile ``(i, j)`` holds the DCT of the same image tile.
  """
  b, h, w, c = images.shape
  if h % block or w % block:
    raise InputError(f'image size {(h, w)} is not a multiple of the block size {block}')
  d = jnp.asarray(dct_matrix(block))
  tiles = images.reshape(b, h // block, block, w // block, block, c)
  spec = 'ku,bikjlc,lv->biujvc' if inverse else 'uk,bikjlc,vl->biujvc'
  out = jnp.einsum(spec, d, tiles, d, precision=jax.lax.Precision.HIGHEST)
  return out.reshape(b, h, w, c)


# ------------------------------------------------------------------- filters


def depthwise_conv(images, kernel, pad_mode: str = 'reflect'):
  """Convolves every channel with one 2-D ``kernel`` ``(kh, kw)`` (odd sizes).

  The border is padded with ``jnp.pad(mode=pad_mode)`` ('reflect' is OpenCV's
  BORDER_REFLECT_101, 'edge' is scipy's 'nearest'), so the output keeps the
  input size.
  """
  chex.assert_rank(images, 4)
  kernel = jnp.asarray(kernel, images.dtype)
  kh, kw = kernel.shape
  if kh % 2 == 0 or kw % 2 == 0:
    raise InputError(f'kernel sizes must be odd; got {kernel.shape}')
  c = images.shape[-1]
  ph, pw = kh // 2, kw // 2
  if pad_mode == 'reflect' and (ph >= images.shape[1] or pw >= images.shape[2]):
    pad_mode = 'edge'  # reflection needs the image to be larger than the pad
  x = jnp.pad(images, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode=pad_mode)
  rhs = jnp.tile(kernel[:, :, None, None], (1, 1, 1, c))  # HWIO, I = 1 per group
  return jax.lax.conv_general_dilated(
      x, rhs, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=c, precision=jax.lax.Precision.HIGHEST)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
  """Normalised 1-D Gaussian of radius ``ceil(truncate * sigma)`` (scipy's rule)."""
  if sigma <= 0:
    raise InputError(f'sigma must be > 0; got {sigma}')
  r = int(math.ceil(truncate * sigma))
  t = np.arange(-r, r + 1, dtype=np.float64)
  k = np.exp(-0.5 * (t / sigma) ** 2)
  return (k / k.sum()).astype(np.float32)


def gaussian_blur(images, sigma: float, pad_mode: str = 'edge'):
  """Separable Gaussian blur with standard deviation ``sigma`` pixels.

  ``pad_mode='edge'`` matches ``scipy.ndimage.gaussian_filter(mode='nearest')``
  (and skimage's ``gaussian``).
  """
  k = gaussian_kernel1d(sigma)
  x = depthwise_conv(images, k[:, None], pad_mode)
  return depthwise_conv(x, k[None, :], pad_mode)


def box_filter(images, size: int = 3, pad_mode: str = 'reflect'):
  """Mean over a ``size x size`` window (OpenCV ``blur``)."""
  return depthwise_conv(images, np.full((size, size), 1.0 / size**2, np.float32), pad_mode)


def median_filter(images, size: int = 3, pad_mode: str = 'reflect'):
  """Median over a ``size x size`` window, per channel (OpenCV ``medianBlur``)."""
  chex.assert_rank(images, 4)
  r = size // 2
  if size % 2 == 0 or size < 1:
    raise InputError(f'median window must be odd and >= 1; got {size}')
  h, w = images.shape[1:3]
  x = jnp.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode=pad_mode if r < min(h, w) else 'edge')
  views = [x[:, i : i + h, j : j + w] for i in range(size) for j in range(size)]
  return jnp.median(jnp.stack(views), axis=0)


# ---------------------------------------------------------------- resampling


def area_matrix(n_out: int, n_in: int) -> np.ndarray:
  """``(n_out, n_in)`` box-filter resampling weights (area of overlap).

  Output pixel ``i`` covers ``[i, i + 1) * n_in / n_out`` in input coordinates;
  its weight on input pixel ``j`` is the overlap of that interval with
  ``[j, j + 1)``, normalised to sum to one. For downsampling this is area
  averaging (PIL's BOX filter); for upsampling it is nearest neighbour except
  at cell borders.
  """
  edges = np.arange(n_out + 1) * (n_in / n_out)
  lo, hi = edges[:-1, None], edges[1:, None]
  j = np.arange(n_in)[None, :]
  w = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
  return (w / w.sum(1, keepdims=True)).astype(np.float32)


def linear_matrix(n_out: int, n_in: int) -> np.ndarray:
  """``(n_out, n_in)`` linear-interpolation weights, half-pixel centres, edges clamped.

  Output pixel ``i`` samples input coordinate ``(i + 0.5) n_in / n_out - 0.5``
  (``jax.image.resize(..., 'bilinear')`` when upsampling).
  """
  pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = pos - lo
  m = np.zeros((n_out, n_in), np.float64)
  m[np.arange(n_out), lo] += 1 - frac
  m[np.arange(n_out), hi] += frac
  return m.astype(np.float32)


def area_resize(images, out_hw):
  """Box-filter resize of ``(B, H, W, C)`` images to ``out_hw = (H', W')``."""
  chex.assert_rank(images, 4)
  ah = jnp.asarray(area_matrix(out_hw[0], images.shape[1]))
  aw = jnp.asarray(area_matrix(out_hw[1], images.shape[2]))
  return jnp.einsum('kh,bhwc,lw->bklc', ah, images, aw, precision=jax.lax.Precision.HIGHEST)


def bilinear_gather(images, rows, cols, mode: str = 'constant'):
  """Bilinear samples of every image at float pixel coordinates.

  Args:
    images: ``(B, H, W, C)``.
    rows, cols: coordinates of shape ``(B, *S)`` (one set per image) or
      ``(1, *S)`` (shared by the batch); numpy constants or traced arrays.
    mode: ``'constant'`` (neighbours outside the image count as 0, like
      ``map_coordinates(order=1, mode='constant')``) or ``'nearest'``
      (coordinates clamped to the image).

  Returns:
    ``(B, *S, C)``. Four gathers, whatever ``S``: cheap to compile.
  """
  chex.assert_rank(images, 4)
  if mode not in ('constant', 'nearest'):
    raise InputError(f"mode must be 'constant' or 'nearest'; got {mode!r}")
  b, h, w, c = images.shape
  rows = jnp.asarray(rows, jnp.float32)
  cols = jnp.asarray(cols, jnp.float32)
  if rows.shape != cols.shape or rows.shape[0] not in (1, b):
    raise InputError(f'rows and cols must share a shape (B or 1, ...); '
                     f'got {rows.shape}, {cols.shape}')
  if mode == 'nearest':
    rows, cols = jnp.clip(rows, 0, h - 1), jnp.clip(cols, 0, w - 1)
  out_shape = (b, *rows.shape[1:])
  flat = images.reshape(b, h * w, c)
  r0, c0 = jnp.floor(rows), jnp.floor(cols)
  fr, fc = rows - r0, cols - c0
  out = jnp.zeros((*out_shape, c), images.dtype)
  for dr in (0, 1):
    for dc in (0, 1):
      rr, cc = r0 + dr, c0 + dc
      wgt = (fr if dr else 1 - fr) * (fc if dc else 1 - fc)
      if mode == 'constant':
        wgt = wgt * ((rr >= 0) & (rr <= h - 1) & (cc >= 0) & (cc <= w - 1))
      idx = (jnp.clip(rr, 0, h - 1) * w + jnp.clip(cc, 0, w - 1)).astype(jnp.int32)
      idx = jnp.broadcast_to(idx, out_shape).reshape(b, -1, 1)
      vals = jnp.take_along_axis(flat, idx, axis=1).reshape(*out_shape, c)
      out = out + vals * jnp.broadcast_to(wgt, out_shape)[..., None].astype(images.dtype)
  return out


def affine_coords(h: int, w: int, angle_deg: float = 0.0, shift=(0.0, 0.0),
                  zoom: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """Source coordinates ``(rows, cols)``, each ``(H, W)``, of :func:`affine_warp`."""
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                       indexing='ij')
  y, x = (yy - cy - shift[0]) / zoom, (xx - cx - shift[1]) / zoom
  t = np.deg2rad(angle_deg)
  # Inverse map of a counter-clockwise rotation as displayed (rows point down).
  src_y = cy + np.cos(t) * y + np.sin(t) * x
  src_x = cx - np.sin(t) * y + np.cos(t) * x
  return src_y.astype(np.float32), src_x.astype(np.float32)


def affine_warp(images, angle_deg: float = 0.0, shift=(0.0, 0.0), zoom: float = 1.0,
                mode: str = 'constant'):
  """Rotates (counter-clockwise as displayed, like PIL), zooms and shifts about the centre.

  Output pixel ``p`` takes the input at ``c + R^-1 (p - c - shift) / zoom``
  (bilinear), with ``c`` the image centre; pixels mapped from outside the
  image are 0 for ``mode='constant'``.

  Args:
    images: ``(B, H, W, C)``.
    angle_deg: rotation in degrees.
    shift: ``(dy, dx)`` translation in pixels (positive: down, right).
    zoom: magnification (> 1 enlarges the content).
    mode: border handling, see :func:`bilinear_gather`.
  """
  chex.assert_rank(images, 4)
  rows, cols = affine_coords(images.shape[1], images.shape[2], angle_deg, shift, zoom)
  return bilinear_gather(images, rows[None], cols[None], mode)


def shrink_pad(images, offsets, shrink: int):
  """Resizes to ``(H - shrink, W - shrink)`` and zero-pads back at ``offsets``.

  Args:
    images: ``(B, H, W, C)``.
    offsets: int ``(B, 2)``: top and left padding of each image, each in
      ``[0, shrink]`` (the rest goes to the bottom and right).
    shrink: pixels removed from each spatial size, ``0 <= shrink < min(H, W)``.

  Returns:
    ``(B, H, W, C)``: the antialiased bilinear shrink (``jax.image.resize``)
    placed on a black canvas.
  """
  chex.assert_rank(images, 4)
  b, h, w, c = images.shape
  chex.assert_shape(offsets, (b, 2))
  if not 0 <= shrink < min(h, w):
    raise InputError(f'shrink must lie in [0, {min(h, w)}); got {shrink}')
  small = jnp.clip(jax.image.resize(images, (b, h - shrink, w - shrink, c), 'bilinear'), 0.0, 1.0)
  canvas = jnp.zeros((h, w, c), images.dtype)
  place = lambda im, off: jax.lax.dynamic_update_slice(canvas, im, (off[0], off[1], 0))
  return jax.vmap(place)(small, offsets.astype(jnp.int32))


# ------------------------------------------------------------------- colour


def rgb_to_ycbcr(images):
  """JFIF RGB -> YCbCr on [0, 255]-scaled values (Cb, Cr centred at 128)."""
  m = jnp.asarray([[0.299, 0.587, 0.114],
                   [-0.168736, -0.331264, 0.5],
                   [0.5, -0.418688, -0.081312]], images.dtype)
  return jnp.einsum('...c,dc->...d', images, m) + jnp.asarray([0.0, 128.0, 128.0], images.dtype)


def ycbcr_to_rgb(images):
  """Inverse of :func:`rgb_to_ycbcr`."""
  m = jnp.asarray([[1.0, 0.0, 1.402],
                   [1.0, -0.344136, -0.714136],
                   [1.0, 1.772, 0.0]], images.dtype)
  return jnp.einsum('...c,dc->...d', images - jnp.asarray([0.0, 128.0, 128.0], images.dtype), m)


def adjust_value(images, delta: float):
  """Adds ``delta`` to the HSV value channel (clipped to [0, 1]), keeping hue and saturation.

  With hue and saturation fixed, every RGB channel is proportional to the
  value ``V = max(R, G, B)``, so this is ``rgb * V' / V`` with
  ``V' = clip(V + delta, 0, 1)`` (and grey ``V'`` where ``V = 0``): the same
  as converting to HSV, shifting V and converting back.
  """
  v = jnp.max(images, axis=-1, keepdims=True)
  v_new = jnp.clip(v + delta, 0.0, 1.0)
  safe_v = jnp.where(v > 0, v, 1.0)
  return jnp.where(v > 0, images * (v_new / safe_v), v_new)


# --------------------------------------------------------------------- JPEG

# ITU-T T.81 Annex K quantisation tables.
JPEG_LUMA = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99]], np.float32)
JPEG_CHROMA = np.full((8, 8), 99.0, np.float32)
JPEG_CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def jpeg_quant_tables(quality: int) -> tuple[np.ndarray, np.ndarray]:
  """Luma and chroma tables scaled to ``quality`` (1..100) with the IJG rule."""
  if not 1 <= quality <= 100:
    raise InputError(f'JPEG quality must lie in [1, 100]; got {quality}')
  s = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
  scale = lambda t: np.clip(np.floor((t * s + 50.0) / 100.0), 1, 255).astype(np.float32)
  return scale(JPEG_LUMA), scale(JPEG_CHROMA)


def jpeg_like(images, quality: int):
  """JPEG round trip without entropy coding or chroma subsampling.

  RGB -> YCbCr (JFIF), level shift, 8x8 orthonormal block DCT, quantisation
  with the Annex K tables scaled to ``quality`` (IJG rule), dequantisation,
  inverse DCT and colour transform, then rounding to 8-bit levels. Images
  whose sides are not multiples of 8 are edge-padded and cropped back.
  Deviation from a real encoder: no 4:2:0 chroma subsampling (PIL's default),
  so chroma is degraded less.

  Args:
    images: ``(B, H, W, 3)`` in [0, 1].
    quality: 1..100 (static).

  Returns:
    ``(B, H, W, 3)`` in [0, 1], multiples of 1/255.
  """
  chex.assert_rank(images, 4)
  if images.shape[-1] != 3:
    raise InputError(f'jpeg_like needs RGB images; got {images.shape[-1]} channels')
  b, h, w, _ = images.shape
  ph, pw = (-h) % 8, (-w) % 8
  x = jnp.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), mode='edge')
  ycc = rgb_to_ycbcr(jnp.round(x * 255.0)) - 128.0
  luma, chroma = jpeg_quant_tables(quality)
  q = jnp.asarray(np.stack([luma, chroma, chroma], -1))  # (8, 8, 3)
  q = jnp.tile(q, ((h + ph) // 8, (w + pw) // 8, 1))
  coeffs = block_dct2(ycc)
  coeffs = jnp.round(coeffs / q) * q
  rgb = ycbcr_to_rgb(block_dct2(coeffs, inverse=True) + 128.0)
  return (jnp.clip(jnp.round(rgb), 0.0, 255.0) / 255.0)[:, :h, :w]
