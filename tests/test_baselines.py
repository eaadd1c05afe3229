"""Baseline detectors and the detector registry, on hand-made models and tiny inputs.

Everything runs on 8x8 images with toy models or the TinyResNet so the file
stays cheap to compile.
"""

import colorsys
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from scaleup_jax import detectors, scaleup
from scaleup_jax.baselines import (common, corruptions, frequency, ibd_psc, image_ops, shrinkpad,
                                   strip, teco)
from scaleup_jax.models import TinyResNet
from scaleup_jax.validation import InputError

HW = 8
CONST_LOGITS = np.array([0.3, 2.0, -1.0, 0.5], np.float32)


def images_(seed, n=6, hw=HW):
  return np.random.RandomState(seed).rand(n, hw, hw, 3).astype(np.float32)


def constant_apply(variables, x):
  """A model that ignores its input: the same logits for every image."""
  del variables
  return jnp.broadcast_to(jnp.asarray(CONST_LOGITS), (x.shape[0], CONST_LOGITS.size))


def range_checking_apply(variables, x):
  """Ignores the content; predicts class 1 only if a pixel leaves [0, 1]."""
  del variables
  bad = ((x < 0) | (x > 1)).any(axis=(1, 2, 3)).astype(jnp.float32)
  return jnp.stack([1 - bad, bad], axis=-1)


def mean_colour_apply(variables, x):
  """A cheap input-dependent model: logits linear in the mean colour."""
  return x.mean(axis=(1, 2)) @ variables['w']


MEAN_VARS = {'w': jnp.asarray(np.random.RandomState(0).randn(3, 5).astype(np.float32) * 20)}


@pytest.fixture(scope='module')
def tiny8():
  """TinyResNet on 8x8 inputs with randomised parameters and BN statistics."""
  model = TinyResNet(num_classes=10)
  v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, HW, HW, 3)))
  rng = np.random.RandomState(1)
  v = jax.tree_util.tree_map(
      lambda l: (0.5 * rng.randn(*l.shape) + (len(l.shape) == 1)).astype(np.float32), v)
  v['batch_stats'] = jax.tree_util.tree_map(np.abs, v['batch_stats'])  # variances > 0
  return functools.partial(model.apply, train=False), v


# ------------------------------------------------------------------ image ops


def test_dct_matches_direct_formula_and_scipy():
  n = 5
  direct = np.array([[np.cos(np.pi * (2 * m + 1) * k / (2 * n)) * np.sqrt((1 if k == 0 else 2) / n)
                      for m in range(n)] for k in range(n)])
  np.testing.assert_allclose(image_ops.dct_matrix(n), direct, atol=1e-6)
  x = np.random.RandomState(0).rand(2, 8, 6, 3).astype(np.float32)
  x16 = np.random.RandomState(1).rand(1, 16, 16, 1).astype(np.float32)

  @jax.jit
  def transforms(x, x16):
    blocks = image_ops.block_dct2(x16)
    return (image_ops.dct2(x), image_ops.idct2(image_ops.dct2(x)), blocks,
            image_ops.block_dct2(blocks, inverse=True))

  spec, back, blocks, blocks_back = (np.asarray(a) for a in transforms(x, x16))
  scipy_fft = pytest.importorskip('scipy.fft')
  np.testing.assert_allclose(spec, scipy_fft.dctn(x, axes=(1, 2), norm='ortho'), atol=1e-5)
  np.testing.assert_allclose(back, x, atol=1e-5)
  np.testing.assert_allclose(blocks[0, 8:, :8, 0], scipy_fft.dctn(x16[0, 8:, :8, 0], norm='ortho'),
                             atol=1e-5)
  np.testing.assert_allclose(blocks_back, x16, atol=1e-5)


def test_warps_colour_jpeg_and_shrink_pad_hand_checked():
  x = images_(0, 2)

  @jax.jit
  def ops(x):
    return (image_ops.affine_warp(x, angle_deg=90.0), image_ops.affine_warp(x, shift=(2.0, 3.0)),
            image_ops.adjust_value(x, 0.2), image_ops.jpeg_like(x, 100),
            image_ops.shrink_pad(jnp.ones_like(x), jnp.array([[0, 0], [4, 1]]), 4))

  rot, shifted, brighter, jpeg, padded = (np.asarray(a) for a in ops(x))
  np.testing.assert_allclose(rot, np.rot90(x, 1, axes=(1, 2)), atol=1e-5)
  np.testing.assert_allclose(shifted[:, 2:, 3:], x[:, :-2, :-3], atol=1e-6)
  assert np.all(shifted[:, :2] == 0) and np.all(shifted[:, :, :3] == 0)
  # HSV value shift equals colorsys on a pixel.
  h, s, v = colorsys.rgb_to_hsv(*x[0, 0, 0])
  np.testing.assert_allclose(brighter[0, 0, 0], colorsys.hsv_to_rgb(h, s, min(v + 0.2, 1.0)),
                             atol=1e-6)
  # JPEG at quality 100 is close to the 8-bit image; output lies on 8-bit levels.
  assert np.abs(jpeg - x).max() < 4 / 255
  np.testing.assert_allclose(jpeg * 255, np.round(jpeg * 255), atol=1e-3)
  # ShrinkPad: a 4x4 white square at the top-left, then at (4, 1), black elsewhere.
  np.testing.assert_allclose(padded[0, :4, :4], 1.0, atol=1e-6)
  assert np.all(padded[0, 4:] == 0) and np.all(padded[0, :, 4:] == 0)
  np.testing.assert_allclose(padded[1, 4:, 1:5], 1.0, atol=1e-6)
  np.testing.assert_allclose(padded[1].sum(), 4 * 4 * 3, rtol=1e-5)


# ----------------------------------------------------------------------- STRIP


def test_entropy_bits_hand_computed():
  np.testing.assert_allclose(common.entropy_bits(jnp.array([0.5, 0.25, 0.25])), 1.5, rtol=1e-6)
  np.testing.assert_allclose(common.entropy_bits(jnp.array([0.0, 1.0, 0.0])), 0.0, atol=1e-7)
  np.testing.assert_allclose(common.entropy_bits(jnp.full(4, 0.25)), 2.0, rtol=1e-6)


def test_strip_constant_model_scores_its_entropy():
  p = np.exp(CONST_LOGITS) / np.exp(CONST_LOGITS).sum()
  expected = np.sum(p * np.log2(p))  # = -H
  det = detectors.make('strip', constant_apply, key=0, benign_images=images_(1, 12),
                       num_overlays=7)
  preds, scores = det({}, images_(2))
  np.testing.assert_array_equal(preds, 1)
  np.testing.assert_allclose(scores, expected, rtol=1e-5)
  assert det.needs == 'probabilities' and det.model_forwards == 8


def test_strip_chunked_equals_vmapped_equals_loop():
  x, overlays = images_(3, 4), images_(4, 5)
  _, chunked = strip.strip_scores(mean_colour_apply, MEAN_VARS, x, overlays, chunk=2)
  _, full = strip.strip_scores(mean_colour_apply, MEAN_VARS, x, overlays, chunk=None)
  w = np.asarray(MEAN_VARS['w'], np.float64)
  loop = []
  for b in overlays:  # numpy reference
    logits = np.clip(x + b, 0, 1).mean(axis=(1, 2)) @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loop.append(-np.sum(p * np.log2(np.maximum(p, 1e-300)), axis=1))
  np.testing.assert_allclose(chunked, full, rtol=1e-5)
  np.testing.assert_allclose(full, -np.mean(loop, axis=0), rtol=1e-4)


# --------------------------------------------- ShrinkPad, DeepSweep, TeCo (labels)


def test_input_ignoring_model_is_never_inconsistent():
  x = images_(5)
  for name in ('shrinkpad', 'deepsweep'):
    preds, scores = detectors.make(name, range_checking_apply, key=1)({}, x)
    np.testing.assert_array_equal(preds, 0)
    np.testing.assert_array_equal(scores, 0.0)


def test_teco_constant_model_zero_std_all_corruptions_in_range():
  # The model predicts 0 unless a pixel leaves [0, 1], so this also checks
  # that all 60 corrupted copies stay in range.
  det = detectors.make('teco', range_checking_apply, key=2)
  assert det.model_forwards == 1 + 5 * len(corruptions.CORRUPTIONS)
  for seed in (6, 7):
    preds, scores = det({}, images_(seed, 3))
    np.testing.assert_array_equal(preds, 0)
    np.testing.assert_array_equal(scores, 0.0)
  assert det.core._cache_size() == 1


def test_teco_first_flip_and_std_hand_computed():
  preds = jnp.array([3, 3])
  labels = np.full((2, 5, 2), 3)
  labels[0, 2:, 0] = 1   # type 0 flips at severity 3 for image 0
  labels[1, 0, 0] = 2    # type 1 flips at severity 1
  labels[0, 4, 1] = 0    # image 1: type 0 flips at 5, type 1 never (6)
  first = teco.first_flip(jnp.asarray(labels), preds)
  np.testing.assert_array_equal(first, [[3, 5], [1, 6]])
  np.testing.assert_allclose(jnp.std(first.astype(jnp.float32), axis=0), [1.0, 0.5])


def test_scoring_functions_trace_once_across_batches_and_keys():
  fn = jax.jit(chex.assert_max_traces(
      lambda x, k: shrinkpad.shrinkpad_scores(mean_colour_apply, MEAN_VARS, x, k, 2, 3), n=1))
  for seed in (8, 9, 10):
    _, s = fn(images_(seed, 4), jax.random.key(seed))
    assert s.shape == (4,) and np.all((s >= 0) & (s <= 1))
  det = detectors.make('deepsweep', mean_colour_apply, key=0, transforms=('median_3x3', 'rotate'))
  for seed in (11, 12):
    det(MEAN_VARS, images_(seed, 4))
  assert det.core._cache_size() == 1


# ----------------------------------------------------------------------- IBD-PSC

TINY_BN_ORDER = [('stem_bn',), ('BasicBlock_0', 'BatchNorm_0'), ('BasicBlock_0', 'BatchNorm_1'),
                 ('BasicBlock_1', 'BatchNorm_0'), ('BasicBlock_1', 'BatchNorm_1'),
                 ('BasicBlock_1', 'proj_bn')]


def test_bn_order_and_amplification_touch_exactly_the_chosen_params(tiny8):
  apply_fn, v = tiny8
  paths = ibd_psc.bn_layer_paths(apply_fn, v, (HW, HW, 3))
  assert paths == TINY_BN_ORDER
  np.testing.assert_array_equal(ibd_psc.factor_matrix([1, 3], 4, 1.5),
                                [[1, 1, 1, 1.5], [1, 1.5, 1.5, 1.5]])
  factors = jnp.asarray(ibd_psc.factor_matrix([2], len(paths), 1.5)[0])
  amp = jax.jit(lambda v, f: ibd_psc.amplify_bn(v, f, paths))(v, factors)
  flat_v, flat_a = traverse_util.flatten_dict(v), traverse_util.flatten_dict(amp)
  assert flat_v.keys() == flat_a.keys()
  chosen = set(paths[-2:])
  changed = 0
  for k, old in flat_v.items():
    if k[0] == 'params' and k[1:-1] in chosen and k[-1] in ('scale', 'bias'):
      np.testing.assert_array_equal(flat_a[k], np.float32(1.5) * old)
      changed += 1
    else:
      np.testing.assert_array_equal(flat_a[k], old)
  assert changed == 4


def test_psc_vmapped_equals_plain_loop(tiny8):
  apply_fn, v = tiny8
  x = images_(13, 5)
  factors = ibd_psc.factor_matrix([1, 3, 6], len(TINY_BN_ORDER), 1.5)
  preds, psc = jax.jit(lambda v, x, f: ibd_psc.psc_scores(apply_fn, v, x, f, TINY_BN_ORDER))(
      v, x, jnp.asarray(factors))
  one_model = jax.jit(lambda v, x, f: jax.nn.softmax(
      apply_fn(ibd_psc.amplify_bn(v, f, TINY_BN_ORDER), x)))
  base = np.asarray(one_model(v, x, jnp.ones(len(TINY_BN_ORDER)))).argmax(-1)
  conf = [np.asarray(one_model(v, x, jnp.asarray(f)))[np.arange(5), base] for f in factors]
  np.testing.assert_array_equal(preds, base)
  np.testing.assert_allclose(psc, np.mean(conf, axis=0), rtol=1e-4, atol=1e-6)


class ConstantBNNet(nn.Module):
  """Ignores its input; two BatchNorm layers and a dense head."""

  @nn.compact
  def __call__(self, x):
    h = jnp.ones((x.shape[0], 4))
    h = nn.BatchNorm(use_running_average=True, bias_init=nn.initializers.constant(0.3))(h)
    h = nn.BatchNorm(use_running_average=True, scale_init=nn.initializers.constant(2.0))(h)
    return nn.Dense(3)(h)


def test_ibd_psc_constant_model_and_layer_choice_rule():
  net = ConstantBNNet()
  v = jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, HW, HW, 3)))
  benign = images_(14, 8)
  preds0 = np.asarray(jax.jit(net.apply)(v, benign)).argmax(-1)
  # Every label wrong: the first k (= 1) already exceeds xi.
  det = detectors.make('ibd_psc', net.apply, v, key=0, benign_images=benign,
                       benign_labels=(preds0 + 1) % 3, n=3)
  assert det.config['start_k'] == 1 and det.config['amplified_layer_counts'] == [2, 2, 2]
  assert det.needs == 'parameters' and det.model_forwards == 4
  preds, psc = det(v, images_(15, 6))
  np.testing.assert_array_equal(preds, preds0[0])
  np.testing.assert_allclose(psc, psc[0], rtol=1e-6)
  # An error rate can never exceed 1: no k is found, fall back with a warning.
  with pytest.warns(UserWarning, match='no amplification'):
    det = detectors.make('ibd_psc', net.apply, v, key=0, benign_images=benign, xi=1.0, n=1)
  assert det.config['start_found'] is False and det.config['amplified_layer_counts'] == [2]


# --------------------------------------------------------------------- Frequency


def test_synthetic_poison_and_a_short_training_run():
  clean = images_(16, 16)
  poison = jax.jit(lambda k, x: frequency.synthetic_poison(common.fast_key(k), x))
  poisoned, kinds = poison(jax.random.key(0), clean)
  poisoned, kinds = np.asarray(poisoned), np.asarray(kinds)
  assert poisoned.shape == clean.shape and poisoned.min() >= 0 and poisoned.max() <= 1
  assert set(kinds.tolist()) <= {0, 1, 2}
  assert np.all(np.abs(poisoned - clean).max(axis=(1, 2, 3)) > 0)
  det = detectors.make('frequency', constant_apply, key=3, benign_images=clean,
                       steps=3, batch_size=4, widths=(4,))
  assert np.isfinite(det.config['final_loss'])
  assert (det.needs, det.model_forwards, det.detector_forwards) == ('none', 1, 1)
  preds, scores = det({}, images_(17, 4))
  np.testing.assert_array_equal(preds, 1)
  assert np.all((np.asarray(scores) >= 0) & (np.asarray(scores) <= 1))


# ---------------------------------------------------------------------- registry


def test_registry_unknown_name_lists_the_known_ones():
  with pytest.raises(InputError, match='known detectors: scaleup, strip, shrinkpad'):
    detectors.make('neural_cleanse', constant_apply, key=0)
  assert detectors.canonical_name('IBD-PSC') == 'ibd_psc'
  assert set(detectors.NAMES) == {'scaleup', 'strip', 'shrinkpad', 'deepsweep', 'frequency',
                                  'ibd_psc', 'teco'}
  assert 'probabilities' in detectors.describe()


@pytest.mark.parametrize('name', ['strip', 'frequency', 'ibd_psc'])
def test_registry_requires_benign_images(name):
  with pytest.raises(InputError, match='benign images'):
    detectors.make(name, constant_apply, {'params': {}}, key=0)


def test_registry_requires_key_and_white_box_variables():
  with pytest.raises(InputError, match='white-box'):
    detectors.make('ibd_psc', constant_apply, key=0, benign_images=images_(0))
  with pytest.raises(InputError, match='PRNG key'):
    detectors.make('shrinkpad', constant_apply, key=None)


def test_scaleup_entry_matches_make_detector_and_batches_with_padding():
  det = detectors.make('scaleup', mean_colour_apply, key=0)
  x = images_(18, 5)
  ref_preds, ref_spc = scaleup.make_detector(mean_colour_apply)(MEAN_VARS, x)
  preds, spc = scaleup.detect_batched(det, x, 4, MEAN_VARS)  # last batch padded
  np.testing.assert_array_equal(preds, ref_preds)
  np.testing.assert_array_equal(spc, ref_spc)
  assert det.model_forwards == 6 and det.core._cache_size() == 1
