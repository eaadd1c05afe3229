"""SCALE-UP core: SPC reduction, compiled detector, data-limited normaliser, thresholds."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from scaleup_jax import scaleup
from scaleup_jax.validation import InputError


@pytest.mark.parametrize('matrix, expected', [
    ([[3, 3, 3, 3, 3, 3]], [1.0]),
    ([[3, 1, 1, 1, 1, 1]], [0.0]),
    ([[2, 2, 0, 2, 0, 2]], [0.6]),
    ([[7, 7], [7, 6]], [1.0, 0.0]),
    ([[0, 1, 0, 1]], [1 / 3]),
])
def test_spc_from_labels_hand_computed(matrix, expected):
  np.testing.assert_allclose(scaleup.spc_from_labels(np.array(matrix)), expected, rtol=1e-6)
  np.testing.assert_allclose(scaleup.spc_from_labels(jnp.array(matrix)), expected, rtol=1e-6)


@pytest.mark.parametrize('bad', [np.zeros((3,), int), np.zeros((3, 1), int)])
def test_spc_rejects_bad_label_matrix(bad):
  with pytest.raises(InputError, match='label matrix'):
    scaleup.spc_from_labels(bad)


def brightness_classifier(x):
  """Label = mean brightness bucket (0..9): a hand-checkable black box."""
  return jnp.clip(jnp.floor(x.mean(axis=(1, 2, 3)) * 10), 0, 9).astype(jnp.int32)


def test_labels_on_hand_made_classifier():
  # mean 0.05 -> bucket 0; scaled by 3 -> 0.15 (1), 5 -> 0.25 (2), 7 -> .35, 9 -> .45, 11 -> .55
  x = jnp.full((1, 4, 4, 3), 0.05)
  lm = scaleup.scaleup_labels(brightness_classifier, x, jnp.array(scaleup.DEFAULT_SCALES))
  np.testing.assert_array_equal(lm, [[0, 1, 2, 3, 4, 5]])
  # A saturated image stays saturated: every scale keeps the label.
  ones = jnp.ones((1, 4, 4, 3))
  lm = scaleup.scaleup_labels(brightness_classifier, ones, jnp.array(scaleup.DEFAULT_SCALES))
  np.testing.assert_array_equal(lm, [[9] * 6])


@pytest.mark.parametrize('method', scaleup.METHODS)
def test_detector_equals_plain_loop_over_scales(tiny_model, method):
  model, variables = tiny_model
  images = jax.random.uniform(jax.random.key(1), (40, 32, 32, 3)) * 0.3
  scales = (2.0, 3.0, 5.0, 11.0)
  detect = scaleup.make_detector(functools.partial(model.apply, train=False), scales, method)
  preds, spc = detect(variables, images)

  def labels(x):
    return np.asarray(jnp.argmax(model.apply(variables, x), -1))

  base = labels(images)
  cols = [labels(jnp.clip(n * images, 0, 1)) for n in scales]
  expected_spc = np.mean(np.stack(cols, 1) == base[:, None], axis=1)
  np.testing.assert_array_equal(preds, base)
  np.testing.assert_allclose(spc, expected_spc)


def test_input_ignoring_model_has_constant_spc_one():
  apply_fn = lambda variables, x: jnp.zeros((x.shape[0], 10)).at[:, 4].set(1.0)
  detect = scaleup.make_detector(apply_fn)
  images = jax.random.uniform(jax.random.key(0), (8, 8, 8, 3))
  preds, spc = detect({}, images)
  np.testing.assert_array_equal(preds, 4)
  np.testing.assert_array_equal(spc, 1.0)


def test_batched_detection_pads_masks_and_compiles_once(tiny_model):
  model, variables = tiny_model
  traced = chex.assert_max_traces(
      lambda v, x: scaleup.scaleup_detect(
          functools.partial(model.apply, train=False), v, x), n=1)
  detect = jax.jit(traced)
  images = np.asarray(jax.random.uniform(jax.random.key(2), (37, 32, 32, 3)))
  preds, spc = scaleup.detect_batched(detect, images, batch_size=16, variables=variables)
  assert preds.shape == (37,) and spc.shape == (37,)
  # Row for row equal to scoring each image alone (same compiled function, padded).
  ref_p, ref_s = scaleup.detect_batched(detect, images[-5:], batch_size=16, variables=variables)
  np.testing.assert_array_equal(preds[-5:], ref_p)
  np.testing.assert_array_equal(spc[-5:], ref_s)


def test_oracle_adapter_matches_compiled_detector(tiny_model):
  model, variables = tiny_model
  images = np.asarray(jax.random.uniform(jax.random.key(3), (12, 32, 32, 3))) * 0.4
  label_fn = lambda x: np.asarray(jnp.argmax(model.apply(variables, x), -1))
  lm = scaleup.oracle_label_matrix(label_fn, images, batch_size=5)
  detect = scaleup.make_detector(functools.partial(model.apply, train=False))
  preds, spc = detect(variables, images)
  np.testing.assert_array_equal(lm[:, 0], preds)
  np.testing.assert_allclose(scaleup.spc_from_labels(lm), spc)
  jitted = scaleup.make_label_detector(lambda x: jnp.argmax(model.apply(variables, x), -1))
  np.testing.assert_allclose(jitted(images)[1], spc)


def test_oracle_rejects_wrong_label_shape():
  with pytest.raises(InputError, match='integer labels of shape'):
    scaleup.oracle_label_matrix(lambda x: np.zeros((len(x), 10)), np.zeros((3, 4, 4, 3), np.float32))


@pytest.mark.parametrize('images, match', [
    (np.zeros((32, 32, 3), np.float32), 'rank 3'),
    (np.zeros((2, 32, 32, 3), np.uint8), 'dtype uint8'),
    (np.full((2, 32, 32, 3), 1.5, np.float32), r'\[0, 1\]; got values in \[1.5, 1.5\]'),
    (np.full((2, 32, 32, 3), np.nan, np.float32), 'NaN'),
    (np.zeros((2, 28, 28, 3), np.float32), 'expects'),
    (np.zeros((0, 32, 32, 3), np.float32), 'empty'),
])
def test_bad_images_are_rejected_with_the_value(tiny_model, images, match):
  model, variables = tiny_model
  detect = scaleup.make_detector(functools.partial(model.apply, train=False))
  with pytest.raises(InputError, match=match):
    scaleup.detect_batched(detect, images, 4, variables, image_shape=(32, 32, 3))


@pytest.mark.parametrize('scales, match', [
    ((), 'empty'), ((3.0, 0.5), r'>= 1.*0.5'), ((3.0, float('nan')), 'finite')])
def test_bad_scales_are_rejected(scales, match):
  with pytest.raises(InputError, match=match):
    scaleup.make_detector(lambda v, x: x.sum((1, 2)), scales)


def test_data_limited_hand_computed():
  # class 0: spc {0.2, 0.4} -> mu .3 sigma .1; class 1: {1, 1} -> sigma 0 -> floored at 0.1
  spc = np.array([0.2, 0.4, 1.0, 1.0])
  preds = np.array([0, 0, 1, 1])
  stats = scaleup.fit_class_stats(spc, preds, num_classes=3, num_scales=5)
  np.testing.assert_allclose(stats.mean, [0.3, 1.0, 0.65], rtol=1e-6)
  # Class 2 has no defender image: falls back to the global std (0.3905...).
  np.testing.assert_allclose(stats.std[:2], [0.1, 0.1], rtol=1e-6)
  np.testing.assert_allclose(stats.std[2], np.std(spc), rtol=1e-6)
  scores = scaleup.data_limited_scores(np.array([0.6, 0.8, 0.65]), np.array([0, 1, 2]), stats)
  np.testing.assert_allclose(scores, [3.0, -2.0, 0.0], atol=1e-5)
  np.testing.assert_allclose(scaleup.data_limited_scores(jnp.array([0.6]), jnp.array([0]), stats), [3.0], rtol=1e-5)


def test_global_variant_cannot_change_auroc():
  rng = np.random.default_rng(0)
  spc = rng.choice(np.linspace(0, 1, 6), size=200)
  y = rng.integers(0, 2, size=200)
  stats = scaleup.fit_class_stats(spc, rng.integers(0, 10, size=200), 10, num_scales=5)
  assert roc_auc_score(y, scaleup.global_scores(spc, stats)) == pytest.approx(roc_auc_score(y, spc))


def test_per_class_normalisation_can_change_auroc():
  # Class 1's benign SPC is naturally high; per-class standardisation separates
  # its benign images from poisoned ones predicted as class 0.
  benign_spc = np.array([0.8, 0.8, 0.6, 0.0, 0.2, 0.0])
  benign_pred = np.array([1, 1, 1, 0, 0, 0])
  stats = scaleup.fit_class_stats(benign_spc, benign_pred, 2, num_scales=5)
  pois_spc, pois_pred = np.array([0.6, 0.8]), np.array([0, 0])
  y = np.r_[np.zeros(6), np.ones(2)]
  raw = roc_auc_score(y, np.r_[benign_spc, pois_spc])
  norm = roc_auc_score(y, np.r_[scaleup.data_limited_scores(benign_spc, benign_pred, stats),
                                scaleup.data_limited_scores(pois_spc, pois_pred, stats)])
  assert raw < 1.0 and norm == 1.0


@pytest.mark.parametrize('scores, fpr, threshold, achieved', [
    ([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0], 0.1, 1.0, 0.0),
    ([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0], 0.5, 0.8, 0.5),
    ([0.1, 0.2, 0.3, 0.4], 0.25, 0.3, 0.25),
    ([0.1, 0.2, 0.3, 0.4], 1.0, -0.9, 1.0),
])
def test_threshold_for_fpr(scores, fpr, threshold, achieved):
  t = scaleup.threshold_for_fpr(scores, fpr)
  assert t == pytest.approx(threshold)
  assert np.mean(np.asarray(scores) > t) == pytest.approx(achieved)


def test_interpolated_tpr_with_tied_scores():
  from scaleup_jax.metrics import detection_metrics
  # 10% of benign at SPC 1, all poisoned at 1: no deterministic threshold gives 5% FPR and
  # TPR > 0, but the ROC at 5% FPR (randomised tie-break) reaches TPR 0.5.
  benign = np.r_[np.zeros(90), np.ones(10)]
  m = detection_metrics(benign, np.ones(50))
  assert m['tpr@0.05fpr'] == 0.0 and m['achieved_fpr@0.05fpr'] == 0.0
  assert m['tpr@0.05fpr_interp'] == pytest.approx(0.5)
  assert m['auroc'] == pytest.approx(0.95)


@pytest.mark.parametrize('method, batch, backend, expected', [
    ('auto', 256, 'cpu', 'map'), ('auto', 32, 'cpu', 'map'), ('auto', 31, 'cpu', 'vmap'),
    ('auto', 1, 'cpu', 'vmap'), ('auto', 256, 'gpu', 'vmap'), ('auto', 256, 'tpu', 'vmap'),
    ('vmap', 256, 'cpu', 'vmap'), ('map', 1, 'gpu', 'map')])
def test_resolve_method(method, batch, backend, expected):
  assert scaleup.resolve_method(method, batch, backend) == expected


def test_resolve_method_rejects_unknown():
  with pytest.raises(InputError, match="unknown method 'loop'"):
    scaleup.resolve_method('loop', 8)
