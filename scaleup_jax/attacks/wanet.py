"""WaNet: an imperceptible warping-based backdoor trigger.

WaNet poisons an image by resampling it along a fixed, smooth warping field.
The field is built once per attack: a ``k x k x 2`` grid of random control
points, normalised to mean absolute value 1, is upsampled bicubically to the
image size (the *noise grid*) and added, with strength ``s / H``, to the
identity sampling grid. Poisoned images are ``grid_sample(x, grid)``; during
training a second group of images (the *cross* or *noise-mode* samples, keeping
their true labels) is warped with the same field plus fresh per-image random
noise, so the network learns the exact warp rather than "any warp".

Conventions follow ``torch.nn.functional.grid_sample(align_corners=True)``
as used by the reference code: a grid holds normalised coordinates in
``[-1, 1]`` with the column (``x``) first and the row (``y``) second;
``x = -1`` is the centre of column 0 and ``x = +1`` the centre of column
``W - 1``. Sampling is bilinear and points outside the image read 0 (torch's
``padding_mode='zeros'``; the WaNet grids are clipped to ``[-1, 1]`` so this
only matters for hand-made grids).

Images are float ``(..., H, W, C)`` in pixel space [0, 1], channels last.

References:
  Nguyen & Tran, "WaNet - Imperceptible Warping-based Backdoor Attack",
  ICLR 2021. https://arxiv.org/abs/2102.10369 (code:
  https://github.com/VinAIResearch/Warping-based_Backdoor_Attack-release).
  BackdoorBox ``core/attacks/WaNet.py`` and ``tests/test_WaNet.py``
  (https://github.com/THUYimingLi/BackdoorBox), whose defaults are used here:
  ``k = 4``, ``s = 0.5``, ``grid_rescale = 1``, noise in ``[-1, 1) / H``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scaleup_jax.baselines.image_ops import bilinear_gather
from scaleup_jax.validation import InputError, check_image_batch

# Keys' cubic-convolution parameter used by PyTorch's bicubic interpolation.
TORCH_CUBIC_A = -0.75


# --------------------------------------------------------------------- grids


def wanet_control_points(key: jax.Array, k: int = 4) -> np.ndarray:
  """The random ``k x k`` control points of the WaNet warping field.

  ``ins = U(-1, 1)^(k, k, 2)``, then ``ins / mean(|ins|)`` so that the mean
  absolute displacement is exactly 1 (before upsampling).

  Args:
    key: PRNG key.
    k: control grid size (WaNet uses 4 on CIFAR-10).

  Returns:
    float32 ``(k, k, 2)`` with ``mean(|ins|) == 1``; the last axis is
    ``(x, y)`` like the grids.

  References:
    Nguyen & Tran, ICLR 2021, Sec. 3.3 ("random ... k x k ... normalised").
  """
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise InputError(f'control grid size k must be an integer >= 1; got {k!r}')
  ins = np.asarray(jax.random.uniform(key, (k, k, 2), minval=-1.0, maxval=1.0), np.float64)
  ins = ins / np.mean(np.abs(ins))
  return ins.astype(np.float32)


def _cubic_weight(t: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel at distances ``t`` (any sign)."""
  t = np.abs(t)
  near = ((a + 2) * t - (a + 3)) * t * t + 1
  far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
  return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def bicubic_matrix(n_out: int, n_in: int, a: float = TORCH_CUBIC_A) -> np.ndarray:
  """``(n_out, n_in)`` bicubic interpolation weights with ``align_corners=True``.

  Matches ``torch.nn.functional.interpolate(mode='bicubic',
  align_corners=True)`` along one axis: output ``i`` samples input coordinate
  ``i (n_in - 1) / (n_out - 1)`` with Keys' kernel (``a = -0.75``) on the four
  nearest inputs, indices clamped to the border. The first and last outputs
  therefore equal the first and last inputs exactly.

  Note: ``jax.image.resize(..., 'cubic')`` differs (Keys ``a = -0.5``,
  half-pixel centres, i.e. ``align_corners=False``), which is why this
  explicit matrix is used for the WaNet noise grid.
  """
  if n_out < 1 or n_in < 1:
    raise InputError(f'sizes must be >= 1; got n_out={n_out}, n_in={n_in}')
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  pos = np.arange(n_out, dtype=np.float64) * scale
  base = np.floor(pos).astype(int)
  frac = pos - base
  m = np.zeros((n_out, n_in), np.float64)
  for tap in (-1, 0, 1, 2):
    idx = np.clip(base + tap, 0, n_in - 1)
    np.add.at(m, (np.arange(n_out), idx), _cubic_weight(frac - tap, a))
  return m


def identity_grid(height: int, width: int | None = None) -> np.ndarray:
  """The identity sampling grid, float32 ``(H, W, 2)`` of ``(x, y)`` in [-1, 1].

  ``grid[i, j] = (linspace(-1, 1, W)[j], linspace(-1, 1, H)[i])``: the
  ``torch.meshgrid`` / ``stack((y, x), 2)`` construction of the WaNet code,
  under which :func:`grid_sample` returns its input.
  """
  width = height if width is None else width
  if height < 1 or width < 1:
    raise InputError(f'grid size must be >= 1; got {(height, width)}')
  ys = np.linspace(-1.0, 1.0, height, dtype=np.float64)
  xs = np.linspace(-1.0, 1.0, width, dtype=np.float64)
  yy, xx = np.meshgrid(ys, xs, indexing='ij')
  return np.stack([xx, yy], axis=-1).astype(np.float32)


def make_wanet_grids(key: jax.Array, image_size: int = 32,
                     k: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """The identity grid and the random noise grid of a WaNet attack.

  Args:
    key: PRNG key for the control points.
    image_size: ``H = W`` of the (square) images.
    k: control grid size, ``1 <= k <= image_size`` (4 in the paper and
      BackdoorBox for CIFAR-10).

  Returns:
    ``(identity_grid, noise_grid)``, each float32 ``(H, W, 2)`` with ``(x, y)``
    on the last axis. ``noise_grid`` is :func:`wanet_control_points`
    upsampled with :func:`bicubic_matrix` (PyTorch's bicubic, ``a = -0.75``,
    ``align_corners=True``, as in ``F.upsample(ins, size=H, mode='bicubic',
    align_corners=True)`` of the reference code). The random numbers differ
    from PyTorch's, so grids are not bit-identical to a torch run.

  References:
    Nguyen & Tran, ICLR 2021, Sec. 3.3; BackdoorBox ``tests/test_WaNet.py``
    (``gen_grid``).
  """
  if not isinstance(image_size, (int, np.integer)) or image_size < 2:
    raise InputError(f'image_size must be an integer >= 2; got {image_size!r}')
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= image_size:
    raise InputError(f'k must be an integer in [1, image_size={image_size}]; got {k!r}')
  ins = wanet_control_points(key, k).astype(np.float64)
  m = bicubic_matrix(image_size, k)
  noise = np.einsum('hk,klc,wl->hwc', m, ins, m)
  return identity_grid(image_size), noise.astype(np.float32)


def backdoor_grid(identity_grid: np.ndarray, noise_grid: np.ndarray, s: float = 0.5,
                  grid_rescale: float = 1.0) -> np.ndarray:
  """The WaNet trigger grid ``clip((identity + s * noise / H) * grid_rescale, -1, 1)``.

  Args:
    identity_grid: ``(H, W, 2)`` from :func:`make_wanet_grids`.
    noise_grid: ``(H, W, 2)`` from :func:`make_wanet_grids`.
    s: warping strength (0.5 in the paper for CIFAR-10); 0 gives the identity.
    grid_rescale: scale applied before clipping (BackdoorBox's default 1).

  Returns:
    float32 ``(H, W, 2)`` in [-1, 1].
  """
  identity_grid = np.asarray(identity_grid, np.float32)
  noise_grid = np.asarray(noise_grid, np.float32)
  if (identity_grid.ndim != 3 or identity_grid.shape[-1] != 2
      or identity_grid.shape != noise_grid.shape):
    raise InputError(f'grids must both have shape (H, W, 2); got {identity_grid.shape} '
                     f'and {noise_grid.shape}')
  if s < 0:
    raise InputError(f'warping strength s must be >= 0; got {s}')
  if grid_rescale <= 0:
    raise InputError(f'grid_rescale must be > 0; got {grid_rescale}')
  h = identity_grid.shape[0]
  grid = (identity_grid + s * noise_grid / h) * grid_rescale
  return np.clip(grid, -1.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------ sampling


@jax.jit
def grid_sample(images, grid):
  """Bilinear ``grid_sample`` with ``align_corners=True`` and zero padding.

  Args:
    images: ``(B, H, W, C)`` float.
    grid: ``(H', W', 2)`` (shared by the batch) or ``(B, H', W', 2)`` (one per
      image) normalised coordinates, ``(x, y)`` on the last axis: ``x = -1``
      is column 0 and ``x = +1`` column ``W - 1``, likewise ``y`` for rows.

  Returns:
    ``(B, H', W', C)`` of the dtype of ``images``; samples outside the image
    blend with 0 (``padding_mode='zeros'``). Jittable.
  """
  check_image_batch(images)
  grid = jnp.asarray(grid, jnp.float32)
  if grid.ndim == 3:
    grid = grid[None]
  if grid.ndim != 4 or grid.shape[-1] != 2 or grid.shape[0] not in (1, images.shape[0]):
    raise InputError(f'grid must have shape (H, W, 2) or (B={images.shape[0]}, H, W, 2); '
                     f'got {grid.shape}')
  h, w = images.shape[1:3]
  cols = (grid[..., 0] + 1.0) * (0.5 * (w - 1))
  rows = (grid[..., 1] + 1.0) * (0.5 * (h - 1))
  return bilinear_gather(images, rows, cols, mode='constant')


@jax.jit
def noise_warp(key: jax.Array, images, grid):
  """WaNet's noise-mode ("cross") samples: the trigger grid plus per-image noise.

  Every image gets ``clip(grid + U(-1, 1)^(H, W, 2) / H, -1, 1)``, fresh
  noise per image, then :func:`grid_sample`.

  Args:
    key: PRNG key for the noise.
    images: ``(B, H, W, C)`` float in [0, 1].
    grid: the trigger grid ``(H, W, 2)`` (:func:`backdoor_grid`).

  Returns:
    ``(B, H, W, C)`` in [0, 1], same dtype. Jittable.

  References:
    Nguyen & Tran, ICLR 2021, Sec. 3.4 (noise mode); BackdoorBox
    ``AddTrigger.add_trigger(noise=True)`` (``noise_rescale = 2``).
  """
  check_image_batch(images)
  grid = jnp.asarray(grid, jnp.float32)
  if grid.ndim != 3 or grid.shape[-1] != 2:
    raise InputError(f'grid must have shape (H, W, 2); got {grid.shape}')
  b = images.shape[0]
  h = grid.shape[0]
  noise = jax.random.uniform(key, (b, *grid.shape), jnp.float32, -1.0, 1.0)
  grids = jnp.clip(grid[None] + noise / h, -1.0, 1.0)
  return jnp.clip(grid_sample(images, grids), 0.0, 1.0).astype(images.dtype)


# ------------------------------------------------------------------- trigger


@dataclasses.dataclass(frozen=True)
class WarpTrigger:
  """A WaNet trigger: a fixed sampling grid ``(H, W, 2)`` applied by :func:`grid_sample`."""

  kind: ClassVar[str] = 'warp'
  grid: np.ndarray

  def __post_init__(self):
    grid = np.asarray(self.grid, np.float32)
    if grid.ndim != 3 or grid.shape[-1] != 2:
      raise InputError(f'warp grid must have shape (H, W, 2); got {grid.shape}')
    object.__setattr__(self, 'grid', grid)

  @property
  def image_hw(self) -> tuple[int, int]:
    """The ``(H, W)`` of the images this trigger applies to."""
    return self.grid.shape[0], self.grid.shape[1]

  def apply(self, images):
    """Warps ``images`` with the trigger grid.

    Args:
      images: float ``(..., H, W, C)`` in [0, 1], numpy or jax.

    Returns:
      Warped images of the same shape and dtype, clipped to [0, 1]; numpy for
      numpy input, jax for jax input (jittable).
    """
    if images.ndim < 3 or tuple(images.shape[-3:-1]) != self.image_hw:
      raise InputError(f'images of shape {images.shape} do not match the warp grid '
                       f'(H, W) = {self.image_hw}')
    is_jax = isinstance(images, jax.Array)
    flat = jnp.asarray(images).reshape(-1, *images.shape[-3:])
    out = jnp.clip(grid_sample(flat, self.grid), 0.0, 1.0).reshape(images.shape)
    if is_jax:
      return out.astype(images.dtype)
    return np.asarray(out, dtype=images.dtype)

  def arrays(self) -> dict[str, np.ndarray]:
    """Everything needed to rebuild the trigger (see :meth:`from_arrays`)."""
    return {'grid': np.array(self.grid, copy=True)}

  @classmethod
  def from_arrays(cls, arrays) -> WarpTrigger:
    """Rebuilds a trigger from :meth:`arrays`."""
    if 'grid' not in arrays:
      raise InputError(f"WarpTrigger arrays need a 'grid' entry; got keys {sorted(arrays)}")
    return cls(grid=np.asarray(arrays['grid'], np.float32))


def wanet_trigger(
    key: jax.Array,
    image_shape: Sequence[int] = (32, 32, 3),
    k: int = 4,
    s: float = 0.5,
    grid_rescale: float = 1.0,
) -> WarpTrigger:
  """The WaNet trigger: a random smooth warp of strength ``s``.

  Args:
    key: PRNG key for the warping field.
    image_shape: ``(H, W, C)`` with ``H == W`` (WaNet's grids are square).
    k: control grid size (4, the paper's and BackdoorBox's CIFAR-10 value).
    s: warping strength (0.5, idem).
    grid_rescale: scale before clipping to [-1, 1] (1, BackdoorBox default).

  Returns:
    A :class:`WarpTrigger`.

  References:
    Nguyen & Tran, ICLR 2021; BackdoorBox ``core/attacks/WaNet.py``.
  """
  if len(image_shape) != 3:
    raise InputError(f'image_shape must be (H, W, C); got {tuple(image_shape)}')
  h, w, _ = image_shape
  if h != w:
    raise InputError(f'WaNet needs square images; got image_shape {tuple(image_shape)}')
  ident, noise = make_wanet_grids(key, int(h), k)
  return WarpTrigger(backdoor_grid(ident, noise, s, grid_rescale))


def wanet_batch_transform(grid) -> Callable:
  """A training-batch hook that warps the cross (noise-mode) samples.

  Args:
    grid: the trigger grid ``(H, W, 2)`` (e.g. ``WarpTrigger.grid``).

  Returns:
    ``transform(key, images, flags)``: ``images`` ``(B, H, W, C)`` float,
    ``flags`` ``(B,)`` int with 0 = clean, 1 = poisoned (already warped by the
    trigger), 2 = cross sample; rows with flag 2 are replaced by
    :func:`noise_warp` of themselves, the others are returned unchanged.
    Shapes are static, so it is jittable.
  """
  grid = np.asarray(grid, np.float32)
  if grid.ndim != 3 or grid.shape[-1] != 2:
    raise InputError(f'grid must have shape (H, W, 2); got {grid.shape}')

  def transform(key, images, flags):
    if flags.shape != images.shape[:1]:
      raise InputError(f'flags must have shape (B,) = {images.shape[:1]}; got {flags.shape}')
    warped = noise_warp(key, images, grid)
    return jnp.where((flags == 2)[:, None, None, None], warped, images)

  return transform
