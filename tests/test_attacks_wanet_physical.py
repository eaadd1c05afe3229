"""WaNet warping and PhysicalBA distortions against their definitions (tiny arrays)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaleup_jax.attacks import physical, wanet
from scaleup_jax.baselines import image_ops
from scaleup_jax.validation import InputError


def _images(b=2, h=8, w=8, c=3, seed=0):
  return np.random.default_rng(seed).random((b, h, w, c)).astype(np.float32)


# --------------------------------------------------------------------- WaNet


def test_control_points_have_unit_mean_abs():
  ins = wanet.wanet_control_points(jax.random.key(0), k=4)
  assert ins.shape == (4, 4, 2) and ins.dtype == np.float32
  np.testing.assert_allclose(np.mean(np.abs(ins)), 1.0, rtol=1e-6)


def test_bicubic_matrix_matches_torch_align_corners():
  np.testing.assert_allclose(wanet.bicubic_matrix(5, 5), np.eye(5), atol=1e-12)
  m = wanet.bicubic_matrix(7, 4)
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)  # partition of unity
  np.testing.assert_allclose(m[0], [1, 0, 0, 0], atol=1e-12)  # corners aligned
  np.testing.assert_allclose(m[-1], [0, 0, 0, 1], atol=1e-12)
  # Output 1 samples input 0.5: Keys a = -0.75 at distances 1.5, 0.5, 0.5, 1.5,
  # the tap at index -1 clamped onto index 0.
  far = -0.75 * 1.5**3 + 3.75 * 1.5**2 - 6 * 1.5 + 3
  near = 1.25 * 0.5**3 - 2.25 * 0.5**2 + 1
  np.testing.assert_allclose(m[1], [far + near, near, far, 0.0], atol=1e-12)


def test_grids_shapes_corners_and_determinism():
  ident, noise = wanet.make_wanet_grids(jax.random.key(1), image_size=8, k=4)
  assert ident.shape == noise.shape == (8, 8, 2)
  assert ident.dtype == noise.dtype == np.float32
  # (x, y) order: x runs along columns, y along rows.
  np.testing.assert_allclose(ident[0, :, 0], np.linspace(-1, 1, 8), atol=1e-7)
  np.testing.assert_allclose(ident[:, 0, 1], np.linspace(-1, 1, 8), atol=1e-7)
  # align_corners=True upsampling keeps the corner control points.
  ins = wanet.wanet_control_points(jax.random.key(1), k=4)
  np.testing.assert_allclose(noise[[0, 0, -1, -1], [0, -1, 0, -1]],
                             ins[[0, 0, -1, -1], [0, -1, 0, -1]], atol=1e-6)
  _, again = wanet.make_wanet_grids(jax.random.key(1), image_size=8, k=4)
  _, other = wanet.make_wanet_grids(jax.random.key(2), image_size=8, k=4)
  np.testing.assert_array_equal(noise, again)
  assert not np.allclose(noise, other)


def test_grid_sample_identity_and_one_pixel_shift():
  x = _images(2, 5, 6, 3)
  ident = wanet.identity_grid(5, 6)
  np.testing.assert_allclose(wanet.grid_sample(jnp.asarray(x), ident), x, atol=1e-5)
  # Shift x by one column (2 / (W - 1)): out[:, :, j] = x[:, :, j + 1].
  shifted = ident + np.array([2.0 / 5, 0.0], np.float32)
  out = np.asarray(wanet.grid_sample(jnp.asarray(x), shifted))
  np.testing.assert_allclose(out[:, :, :-1], x[:, :, 1:], atol=1e-5)
  np.testing.assert_allclose(out[:, :, -1], 0.0, atol=1e-5)  # beyond the border: zeros
  # Clipped to [-1, 1] (as backdoor_grid does), the last column repeats.
  out = np.asarray(wanet.grid_sample(jnp.asarray(x), np.clip(shifted, -1, 1)))
  np.testing.assert_allclose(out[:, :, -1], x[:, :, -1], atol=1e-5)
  # Half a row down (y + 1 / (H - 1)): the mean of neighbouring rows.
  half = ident + np.array([0.0, 1.0 / 4], np.float32)
  out = np.asarray(wanet.grid_sample(jnp.asarray(x), half))
  np.testing.assert_allclose(out[:, :-1], 0.5 * (x[:, :-1] + x[:, 1:]), atol=1e-5)


def test_grid_sample_per_image_grids():
  x = _images(2, 4, 4, 1)
  ident = wanet.identity_grid(4)
  flip = ident * np.array([-1.0, 1.0], np.float32)  # mirror left-right
  out = np.asarray(wanet.grid_sample(jnp.asarray(x), np.stack([ident, flip])))
  np.testing.assert_allclose(out[0], x[0], atol=1e-5)
  np.testing.assert_allclose(out[1], x[1, :, ::-1], atol=1e-5)
  with pytest.raises(InputError, match='grid must have shape'):
    wanet.grid_sample(jnp.asarray(x), np.zeros((3, 4, 4, 2), np.float32))


def test_zero_strength_trigger_is_identity():
  trig = wanet.wanet_trigger(jax.random.key(0), (8, 8, 3), s=0.0)
  x = _images(3)
  np.testing.assert_allclose(trig.apply(x), x, atol=1e-5)


def test_trigger_numpy_jax_dtype_range_and_jit():
  trig = wanet.wanet_trigger(jax.random.key(0), (8, 8, 3), k=4, s=2.0)
  assert trig.kind == 'warp' and trig.grid.shape == (8, 8, 2)
  assert trig.grid.min() >= -1 and trig.grid.max() <= 1
  x = _images(2)
  y = trig.apply(x)
  assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == x.shape
  assert y.min() >= 0.0 and y.max() <= 1.0
  assert not np.allclose(y, x, atol=1e-3)  # it does warp
  y64 = trig.apply(x.astype(np.float64))
  assert isinstance(y64, np.ndarray) and y64.dtype == np.float64
  # Unbatched (H, W, C) and extra leading axes.
  np.testing.assert_allclose(trig.apply(x[0]), y[0], atol=1e-6)
  np.testing.assert_allclose(trig.apply(x[None])[0], y, atol=1e-6)
  yj = jax.jit(trig.apply)(jnp.asarray(x))
  assert isinstance(yj, jax.Array) and yj.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(yj), y, atol=1e-6)
  with pytest.raises(InputError, match='do not match the warp grid'):
    trig.apply(_images(1, 6, 6))


def test_trigger_round_trip():
  trig = wanet.wanet_trigger(jax.random.key(3), (8, 8, 3))
  again = wanet.WarpTrigger.from_arrays(trig.arrays())
  np.testing.assert_array_equal(again.grid, trig.grid)
  x = _images(1)
  np.testing.assert_array_equal(again.apply(x), trig.apply(x))
  with pytest.raises(InputError, match="'grid'"):
    wanet.WarpTrigger.from_arrays({})


def test_backdoor_grid_formula_and_validation():
  ident, noise = wanet.make_wanet_grids(jax.random.key(0), 8)
  g = wanet.backdoor_grid(ident, noise, s=0.5, grid_rescale=0.9)
  np.testing.assert_allclose(g, np.clip((ident + 0.5 * noise / 8) * 0.9, -1, 1), atol=1e-7)
  with pytest.raises(InputError, match='s must be >= 0'):
    wanet.backdoor_grid(ident, noise, s=-1.0)
  with pytest.raises(InputError, match='square'):
    wanet.wanet_trigger(jax.random.key(0), (8, 6, 3))
  with pytest.raises(InputError, match='k must be'):
    wanet.make_wanet_grids(jax.random.key(0), 8, k=9)


def test_noise_warp_and_batch_transform():
  trig = wanet.wanet_trigger(jax.random.key(0), (8, 8, 3))
  xn = _images(4)
  xn[1] = xn[0]  # two copies of one image
  x = jnp.asarray(xn)
  key = jax.random.key(5)
  noisy = np.asarray(wanet.noise_warp(key, x, trig.grid))
  warped = trig.apply(xn)
  assert noisy.shape == xn.shape and noisy.min() >= 0 and noisy.max() <= 1
  # Per-image noise: the two copies warp differently, and not like the trigger ...
  assert not np.allclose(noisy[0], noisy[1], atol=1e-4)
  assert not np.allclose(noisy, warped, atol=1e-4)
  # ... but within a pixel of the trigger grid's warp.
  assert np.max(np.abs(noisy - warped)) < 1.0
  transform = jax.jit(wanet.wanet_batch_transform(trig.grid))
  flags = jnp.asarray([0, 2, 1, 2], jnp.int32)
  out = np.asarray(transform(key, x, flags))
  np.testing.assert_array_equal(out[[0, 2]], xn[[0, 2]])
  np.testing.assert_allclose(out[[1, 3]], noisy[[1, 3]], atol=1e-6)
  np.testing.assert_array_equal(out, np.asarray(transform(key, x, flags)))


# ------------------------------------------------------------------ Physical


def test_jitter_zero_is_identity():
  x = jnp.asarray(_images(3))
  out = physical.color_jitter(jax.random.key(0), x, brightness=0.0, contrast=0.0)
  np.testing.assert_allclose(out, x, atol=1e-6)


def test_contrast_hand_computed():
  x = np.zeros((1, 2, 2, 3), np.float32)
  x[0, 0, 0] = [1.0, 1.0, 1.0]  # grey mean = 0.25
  out = np.asarray(physical.adjust_contrast(jnp.asarray(x), 0.5))
  expected = 0.5 * x + 0.5 * 0.25
  np.testing.assert_allclose(out, expected, atol=1e-6)
  # A (lo, hi) range with lo == hi forces the factor in color_jitter.
  out = physical.color_jitter(jax.random.key(1), jnp.asarray(x), brightness=0.0,
                              contrast=(0.5, 0.5))
  np.testing.assert_allclose(out, expected, atol=1e-6)
  # Grayscale weights 0.299 / 0.587 / 0.114: a pure red image has mean grey 0.299.
  red = np.zeros((1, 1, 1, 3), np.float32)
  red[..., 0] = 1.0
  np.testing.assert_allclose(physical.adjust_contrast(jnp.asarray(red), 0.0), 0.299, atol=1e-6)


def test_brightness_hand_computed_and_clipped():
  x = jnp.asarray(np.full((2, 2, 2, 1), 0.6, np.float32))
  out = np.asarray(physical.adjust_brightness(x, jnp.asarray([0.5, 2.0])))
  np.testing.assert_allclose(out[0], 0.3, atol=1e-6)
  np.testing.assert_allclose(out[1], 1.0, atol=1e-6)


def test_affine_identity_and_rot90():
  x = jnp.asarray(_images(2, 5, 5, 3))
  out = physical.random_affine(jax.random.key(0), x, degrees=0.0, translate=(0.0, 0.0),
                               scale=(1.0, 1.0))
  np.testing.assert_allclose(out, x, atol=1e-5)
  out = physical.random_affine(jax.random.key(0), x, degrees=(90.0, 90.0), translate=(0, 0),
                               scale=(1, 1))
  np.testing.assert_allclose(out, np.rot90(np.asarray(x), k=1, axes=(1, 2)), atol=1e-5)


def test_affine_coords_batch_matches_image_ops():
  rows, cols = physical.affine_coords_batch(6, 7, jnp.asarray([12.0, -30.0]),
                                            jnp.asarray([[1.0, -2.0], [0.0, 3.0]]),
                                            jnp.asarray([0.85, 1.2]))
  for i, (a, s, z) in enumerate([(12.0, (1.0, -2.0), 0.85), (-30.0, (0.0, 3.0), 1.2)]):
    r, c = image_ops.affine_coords(6, 7, a, s, z)
    np.testing.assert_allclose(rows[i], r, atol=1e-4)
    np.testing.assert_allclose(cols[i], c, atol=1e-4)


def test_physical_transform_range_seed_and_flags():
  xn = _images(4)
  x = jnp.asarray(xn)
  key = jax.random.key(7)
  out = physical.physical_transform(key, x)
  assert out.shape == x.shape and out.dtype == x.dtype
  out = np.asarray(out)
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_array_equal(out, np.asarray(physical.physical_transform(key, x)))
  assert not np.allclose(out, np.asarray(physical.physical_transform(jax.random.key(8), x)))
  transform = jax.jit(physical.physical_batch_transform())
  flags = jnp.asarray([0, 1, 2, 1], jnp.int32)
  got = np.asarray(transform(key, x, flags))
  np.testing.assert_array_equal(got[[0, 2]], xn[[0, 2]])
  np.testing.assert_allclose(got[[1, 3]], out[[1, 3]], atol=1e-6)
  assert not np.allclose(got[[1, 3]], xn[[1, 3]], atol=1e-3)
  both = np.asarray(jax.jit(physical.physical_batch_transform(apply_to=(0, 1)))(key, x, flags))
  np.testing.assert_array_equal(both[2], xn[2])
  assert not np.allclose(both[0], xn[0], atol=1e-3)


def test_physical_validation():
  x = jnp.asarray(_images(1))
  with pytest.raises(InputError, match='brightness must be >= 0'):
    physical.color_jitter(jax.random.key(0), x, brightness=-0.1)
  with pytest.raises(InputError, match='scale range'):
    physical.physical_batch_transform(scale=(0.0, 1.0))
  with pytest.raises(InputError, match='translate'):
    physical.random_affine(jax.random.key(0), x, translate=(1.5, 0.0))
  with pytest.raises(InputError, match='1 or 3 channels'):
    physical.adjust_contrast(jnp.zeros((1, 2, 2, 2)), 0.5)
