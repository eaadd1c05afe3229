"""JPEG round trip: re-encode images at a dataset's JPEG quality and decode them back.

The offline CIFAR-10 copy of this project was rebuilt from JPEGs (quality 75,
4:2:0 chroma subsampling), so its benign images are JPEG-smoothed while a
trigger stamped after decoding is not. A detector that looks at high
frequencies then separates "decoded JPEG" from "not", not benign from
poisoned. :func:`jpeg_roundtrip` puts the poisoned images through the same
encoder (``evaluate.DetectOptions(jpeg_match=True)``) so both sides carry the
same compression artefacts.

    >>> x = np.zeros((1, 8, 8, 3), np.float32); x[:, 2:6, 2:6] = 1.0   # a sharp square
    >>> y = jpeg_roundtrip(x)
    >>> y.shape, y.dtype, bool(0.0 <= y.min() <= y.max() <= 1.0)
    ((1, 8, 8, 3), dtype('float32'), True)

Pixels are quantised to 8 bits (``round(255 x)``) before encoding, as the
dataset's were, and decoded to ``uint8 / 255``.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from scaleup_jax.validation import InputError, check_images

# The JPEG settings of the offline CIFAR-10 copy (../shared/README.md).
DATASET_QUALITY = 75
DATASET_SUBSAMPLING = '4:2:0'
# Pillow's ``subsampling`` codes.
SUBSAMPLING = {'4:4:4': 0, '4:2:2': 1, '4:2:0': 2}


def jpeg_roundtrip(images, quality: int = DATASET_QUALITY,
                   subsampling: str = DATASET_SUBSAMPLING) -> np.ndarray:
  """Encodes every image as a JPEG with Pillow and decodes it back.

  Args:
    images: ``(N, H, W, C)`` float in [0, 1], ``C`` = 3 (RGB) or 1
      (grayscale; ``subsampling`` is then irrelevant).
    quality: JPEG quality, 1..95 (Pillow's useful range; default 75, the
      dataset's).
    subsampling: chroma subsampling, one of ``'4:4:4'``, ``'4:2:2'``,
      ``'4:2:0'`` (default, the dataset's).

  Returns:
    float32 ``(N, H, W, C)`` in [0, 1]: the decoded images, multiples of 1/255.

  Raises:
    InputError: images of the wrong rank, dtype or range (see
      :func:`scaleup_jax.validation.check_images`), an unsupported channel
      count, or a bad ``quality`` / ``subsampling``.

  Example:
    >>> smooth = jpeg_roundtrip(np.full((2, 32, 32, 3), 0.5, np.float32))
    >>> float(np.abs(smooth - 128 / 255).max()) < 0.01
    True

  References:
    ../shared/README.md (how the offline CIFAR-10 copy was built).
  """
  x = check_images(images)
  channels = x.shape[-1]
  if channels not in (1, 3):
    raise InputError(f'JPEG needs 1 (grayscale) or 3 (RGB) channels; got {channels} (shape {x.shape})')
  if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 95:
    raise InputError(f'JPEG quality must be an integer in [1, 95]; got {quality!r}')
  if subsampling not in SUBSAMPLING:
    raise InputError(f'unknown chroma subsampling {subsampling!r}; expected one of {tuple(SUBSAMPLING)}')
  u8 = np.round(x * 255.0).astype(np.uint8)
  out = np.empty(x.shape, np.float32)
  mode = 'RGB' if channels == 3 else 'L'
  for i, img in enumerate(u8):
    buf = io.BytesIO()
    pil = Image.fromarray(img if channels == 3 else img[..., 0], mode)
    pil.save(buf, 'JPEG', quality=int(quality), subsampling=SUBSAMPLING[subsampling])
    buf.seek(0)
    dec = np.asarray(Image.open(buf).convert(mode), np.uint8)
    out[i] = (dec if channels == 3 else dec[..., None]) / np.float32(255.0)
  return out
