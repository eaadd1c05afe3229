"""Images out of a classify request, each checked, or one 4xx naming the problem.

Three request forms (``Content-Type``):

* ``multipart/form-data``: PNG or JPEG files in the field ``image``
  (repeat it for several images; ``images`` is accepted too);
* ``application/x-npy``: one ``.npy`` array (``numpy.save``, no pickles),
  ``(H, W, C)`` or ``(N, H, W, C)`` float in [0, 1];
* ``application/json``: ``{"images": [...]}``, a nested list of the same shapes.

Each image must have exactly the model's ``(H, W, C)`` (no resizing: the
firewall never alters what it scores); decoded files are read as
``uint8 / 255`` like the training data. Raw arrays go through
:func:`validation.check_images` (dtype, NaN/inf, range). A request with any bad
image is rejected whole, naming the first bad image's index.

Statuses: 400 malformed request (empty, bad JSON), 413 too large (body, image
count, pixel count), 415 unsupported content type, 422 an image the model
cannot take (not PNG/JPEG, truncated, wrong size or channels, NaN, out of
range).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import warnings

import numpy as np

from scaleup_jax.validation import InputError, check_images

NPY_TYPES = ('application/x-npy', 'application/npy')
IMAGE_FIELDS = ('image', 'images')
FORMATS = {'PNG': 'image/png', 'JPEG': 'image/jpeg'}


class RequestError(InputError):
  """A request the service refuses: ``status`` is the HTTP status, the message says why."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = int(status)


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may carry.

  Attributes:
    max_body_bytes: request body size.
    max_images: images per request.
    max_pixels: width x height of an uploaded file, checked from its header
      before decoding (decompression bombs); files must match the model's
      size anyway, this bounds the work done before that check.
  """

  max_body_bytes: int = 8 << 20
  max_images: int = 64
  max_pixels: int = 4096 * 4096


@dataclasses.dataclass(frozen=True)
class Item:
  """One image of a request.

  Attributes:
    pixels: float32 ``(H, W, C)`` in [0, 1], what the model scores.
    blob: the image as submitted (file bytes, or a ``.npy`` of the array).
    blob_type: its MIME type.
    sha256: hex SHA-256 of ``blob``.
    name: the upload's file name, if any (never stored).
  """

  pixels: np.ndarray
  blob: bytes
  blob_type: str
  sha256: str
  name: str | None = None


def _where(i: int, name: str | None) -> str:
  return f'image {i}' + (f' ({name!r})' if name else '')


def decode_file(i: int, data: bytes, image_shape: tuple, limits: Limits,
                name: str | None = None) -> Item:
  """One uploaded PNG/JPEG file -> :class:`Item`, or :class:`RequestError` naming image ``i``."""
  from PIL import Image, UnidentifiedImageError
  where = _where(i, name)
  if not data:
    raise RequestError(422, f'{where} is empty (0 bytes)')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      im = Image.open(io.BytesIO(data), formats=list(FORMATS))
  except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
    raise RequestError(422, f'{where} is not a PNG or JPEG image ({len(data)} bytes '
                            f'starting {data[:8]!r})') from None
  except Exception as e:  # a corrupt header raises many types
    raise RequestError(422, f'{where} is a corrupt image: {type(e).__name__}: {e}') from None
  w, h = im.size
  if w * h > limits.max_pixels:
    raise RequestError(413, f'{where} is {w}x{h} pixels, over the limit of {limits.max_pixels} '
                            f'pixels (the model takes {image_shape[1]}x{image_shape[0]})')
  want_h, want_w, want_c = image_shape
  if (h, w) != (want_h, want_w):
    raise RequestError(422, f'{where} is {w}x{h} pixels; the model takes {want_w}x{want_h} '
                            '(the firewall does not resize)')
  try:
    im.load()
  except Exception as e:  # truncated or corrupt pixel data
    raise RequestError(422, f'{where} is a truncated or corrupt {im.format}: '
                            f'{type(e).__name__}: {e}') from None
  mode = im.mode
  if mode == 'P' and 'transparency' not in im.info and want_c == 3:
    im, mode = im.convert('RGB'), 'RGB'
  channels = {'L': 1, 'RGB': 3}.get(mode)
  if channels != want_c:
    bands = len(im.getbands())
    raise RequestError(422, f'{where} has mode {mode} ({bands} channel{"s" if bands != 1 else ""}); the model '
                            f'takes {want_c} channel{"s" if want_c != 1 else ""} '
                            f'({"RGB" if want_c == 3 else "L"}), without alpha')
  a = np.asarray(im, np.uint8).reshape(want_h, want_w, want_c)
  return Item(a.astype(np.float32) / 255.0, data, FORMATS[im.format],
              hashlib.sha256(data).hexdigest(), name)


def npy_bytes(image: np.ndarray) -> bytes:
  """``numpy.save`` bytes of one float32 image (what a raw-array record stores)."""
  buf = io.BytesIO()
  np.save(buf, np.ascontiguousarray(image, np.float32), allow_pickle=False)
  return buf.getvalue()


def array_items(arr, image_shape: tuple, limits: Limits) -> list[Item]:
  """A raw ``(H, W, C)`` or ``(N, H, W, C)`` array -> items, each checked by :func:`check_images`."""
  try:
    arr = np.asarray(arr)
  except (ValueError, TypeError) as e:
    raise RequestError(422, f'images are not a rectangular numeric array: {e}') from None
  if arr.dtype == object:
    raise RequestError(422, 'images are not a rectangular numeric array (ragged nesting or '
                            'non-numbers)')
  if arr.ndim == len(image_shape):
    arr = arr[None]
  if arr.ndim != len(image_shape) + 1:
    raise RequestError(422, f'images must have shape (H, W, C) or (N, H, W, C) = '
                            f'(N, {", ".join(map(str, image_shape))}); got shape {arr.shape}')
  if arr.shape[0] == 0:
    raise RequestError(400, 'the request holds no image (an array of 0 images)')
  if arr.shape[0] > limits.max_images:
    raise RequestError(413, f'the request holds {arr.shape[0]} images; at most '
                            f'{limits.max_images} per request')
  items = []
  for i in range(arr.shape[0]):
    try:
      x = check_images(arr[i : i + 1], image_shape)[0]
    except InputError as e:
      raise RequestError(422, f'image {i}: {e}') from None
    blob = npy_bytes(x)
    items.append(Item(x, blob, 'application/x-npy', hashlib.sha256(blob).hexdigest()))
  return items


def parse_npy(body: bytes, image_shape: tuple, limits: Limits) -> list[Item]:
  if not body:
    raise RequestError(400, 'empty request body: send a .npy array of images')
  if not body.startswith(b'\x93NUMPY'):
    what = 'a .npz archive' if body.startswith(b'PK') else f'{len(body)} bytes starting {body[:8]!r}'
    raise RequestError(422, f'the body is not a .npy array (no .npy magic; got {what}); send '
                            'numpy.save bytes of one array')
  try:
    arr = np.load(io.BytesIO(body), allow_pickle=False)
  except ValueError as e:
    raise RequestError(422, f'the body is not a .npy array without pickles: {e}') from None
  except Exception as e:  # bad magic, truncated header: several types
    raise RequestError(422, f'the body is not a .npy array: {type(e).__name__}: {e}') from None
  return array_items(arr, image_shape, limits)


def parse_json(body: bytes, image_shape: tuple, limits: Limits) -> list[Item]:
  if not body:
    raise RequestError(400, 'empty request body: send {"images": [...]}')
  try:
    payload = json.loads(body)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RequestError(400, f'the body is not valid JSON: {e}') from None
  if not isinstance(payload, dict) or 'images' not in payload:
    raise RequestError(400, 'the JSON body must be an object with the key "images"')
  imgs = payload['images']
  if isinstance(imgs, list) and not imgs:
    raise RequestError(400, 'the request holds no image ("images" is an empty list)')
  if isinstance(imgs, list) and len(imgs) > limits.max_images and _depth(imgs) == len(image_shape) + 1:
    raise RequestError(413, f'the request holds {len(imgs)} images; at most {limits.max_images} '
                            'per request')
  try:
    arr = np.array(imgs, dtype=np.float64)
  except (ValueError, TypeError) as e:
    raise RequestError(422, f'"images" is not a rectangular array of numbers: '
                            f'{str(e).splitlines()[0]}') from None
  return array_items(arr, image_shape, limits)


def _depth(x) -> int:
  d = 0
  while isinstance(x, list) and x:
    x, d = x[0], d + 1
  return d


def media_type(content_type: str | None) -> str:
  return (content_type or '').split(';')[0].strip().lower()
