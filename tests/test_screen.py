"""Sequential screen: the same decisions as full SPC, with fewer forwards and no recompiles."""

from functools import partial

import jax
import numpy as np
import pytest

from conftest import ROOT, requires_cifar
from scaleup_jax import calibration, scaleup, screen
from scaleup_jax.validation import InputError

SCALES = scaleup.DEFAULT_SCALES


def _thr(t, p):
  return calibration.Threshold(t, p, 0.05, 'conformal', 1000, 10, 10, True)


# Every kind of rule on 5 scales: ties at each SPC value with a proper coin,
# deterministic ties (p = 0 and p = 1), plain floats, nothing and everything.
THRESHOLDS = [_thr(v, p) for v in (0.2, 0.6, 0.8, 1.0) for p in (0.3,)] + [
    _thr(1.0, 0.0), _thr(0.8, 1.0), 0.5, 0.0, 0.99,
    calibration.Threshold(float('inf'), 0.0, 0.001, 'conformal', 5, 0, 0, False), -1.0]


def _linear_model(num_classes=4, seed=0):
  """A cheap JAX 'classifier' whose labels change under amplification and clipping."""
  w = jax.random.normal(jax.random.key(seed), (8 * 8 * 3, num_classes))

  def apply_fn(v, x):
    x = x.reshape(x.shape[0], 4, 8, 4, 8, 3).mean(axis=(1, 3))  # 8x8 average pool
    return (x.reshape(x.shape[0], -1) - 0.5) @ v

  return apply_fn, w


def _full(apply_fn, variables, images, batch_size):
  det = scaleup.make_detector(apply_fn, SCALES, 'map')
  return scaleup.detect_batched(det, images, batch_size, variables)


def _images(n, seed):
  rng = np.random.default_rng(seed)
  # dark images with varied brightness, so the scales matter
  return np.clip(rng.uniform(0, 1, (n, 32, 32, 3)) * rng.uniform(0.02, 0.6, (n, 1, 1, 1)),
                 0, 1).astype(np.float32)


def test_flag_probability_by_agreement():
  got = screen.flag_probability_by_agreement(5, _thr(1.0, 0.48))
  np.testing.assert_array_equal(got, [0, 0, 0, 0, 0, 0.48])
  np.testing.assert_array_equal(screen.flag_probability_by_agreement(5, _thr(0.8, 0.3)),
                                [0, 0, 0, 0, 0.3, 1])
  np.testing.assert_array_equal(screen.flag_probability_by_agreement(5, 0.5), [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(screen.flag_probability_by_agreement(5, -1.0), [1] * 6)
  # the full detector's SPC values are the ones the rule is evaluated on
  spc = screen._spc_values(5)  # pylint: disable=protected-access
  np.testing.assert_array_equal(spc, np.arange(6, dtype=np.float32) / np.float32(5))


def test_decided_is_exact_on_every_partial_row():
  """Exhaustive over 5 scales: a decided row's probability is that of every completion."""
  import itertools
  for thr in THRESHOLDS:
    p = screen.flag_probability_by_agreement(5, thr)
    for q in range(6):
      for prefix in itertools.product([0, 1], repeat=q):
        g = sum(prefix)
        finals = {p[g + sum(rest)] for rest in itertools.product([0, 1], repeat=5 - q)}
        assert bool(screen.decided(p, np.array([g]), np.array([q]))[0]) == (len(finals) == 1)


def test_same_decisions_as_full_spc_on_random_inputs():
  apply_fn, w = _linear_model()
  images = _images(150, seed=1)
  preds, spc = _full(apply_fn, w, images, 64)
  assert len(np.unique(spc)) >= 4  # the inputs exercise several SPC values
  lm = np.asarray(scaleup.detect_batched(scaleup.make_label_matrix_fn(apply_fn, SCALES, 'map'),
                                         images, 64, w))
  base = screen.SequentialScreen(apply_fn, 0.5, SCALES, batch_size=64)
  for order in ('descending', 'ascending', (2, 0, 4, 1, 3)):
    for thr in THRESHOLDS:
      res = base.replace(threshold=thr, order=order).screen(w, images)
      np.testing.assert_array_equal(res.preds, preds)
      np.testing.assert_array_equal(res.flag_prob, screen.full_spc_flag_probability(spc, thr))
      asked = res.labels >= 0  # the labels it did query are the full label matrix's
      np.testing.assert_array_equal(res.labels[asked], lm[asked])
      assert np.all(res.forwards == 1 + asked[:, 1:].sum(axis=1))
      if isinstance(thr, calibration.Threshold):
        key = jax.random.key(len(res.rounds))
        np.testing.assert_array_equal(res.flags(key), calibration.flag(key, spc, thr))
  assert all(c == 1 for c in base.trace_counts.values()), base.trace_counts


def test_fewer_forwards_and_every_bucket_compiled_once():
  apply_fn, w = _linear_model()
  images = _images(200, seed=2)
  scr = screen.SequentialScreen(apply_fn, _thr(1.0, 0.5), SCALES, batch_size=32,
                                buckets=(4, 8, 16, 32))
  res = scr.screen(w, images)  # 7 batches, the last of 8 images
  again = scr.screen(w, images[:37])
  assert set(scr.trace_counts) <= {4, 8, 16, 32}
  assert all(c == 1 for c in scr.trace_counts.values()), scr.trace_counts
  assert np.mean(res.forwards) < 1 + len(SCALES)
  assert res.rows_computed >= res.forwards.sum()  # padding is counted, not hidden
  np.testing.assert_array_equal(again.flag_prob, res.flag_prob[:37])
  s = res.summary()
  assert s['images'] == 200 and s['clear'] + s['tie'] + s['flag'] == 200


def test_tiny_resnet_matches_full_spc(tiny_model):
  model, variables = tiny_model
  apply_fn = partial(model.apply, train=False)
  images = _images(48, seed=3)
  preds, spc = _full(apply_fn, variables, images, 16)
  scr = screen.SequentialScreen(apply_fn, 0.5, SCALES, batch_size=16, buckets=(4, 8, 16))
  for thr in (_thr(float(np.median(spc)), 0.4), 0.5):
    res = scr.replace(threshold=thr).screen(variables, images)
    np.testing.assert_array_equal(res.preds, preds)
    np.testing.assert_array_equal(res.flag_prob, screen.full_spc_flag_probability(spc, thr))


@requires_cifar
def test_real_zoo_images_benign_and_poisoned():
  from scaleup_jax import checkpoint, data, poison
  run = checkpoint.load_run(ROOT / 'zoo' / 'cifar10_badnets_resnet20')
  test = data.load_split('cifar10', 'test', max_examples=64)
  bad, _, _ = poison.poisoned_test_set(test.images[:40], test.labels[:40], run.trigger, run.target)
  images = np.concatenate([test.images[:40], bad[:24]]).astype(np.float32)
  apply_fn = partial(run.model.apply, train=False)
  preds, spc = _full(apply_fn, run.variables, images, 32)
  thr = _thr(1.0, 0.5)  # the zoo model's calibrated form: SPC > 1 never, SPC = 1 w.p. p
  scr = screen.SequentialScreen(apply_fn, thr, SCALES, batch_size=32, buckets=(8, 16, 32))
  res = scr.screen(run.variables, images)
  np.testing.assert_array_equal(res.preds, preds)
  np.testing.assert_array_equal(res.flag_prob, calibration.flag_probability(spc, thr))
  assert np.sum(res.decisions == screen.TIE) >= 12  # most poisoned rows survive all scales
  assert res.forwards[:40].mean() < 4  # most benign rows are cleared early


def test_disagreement_order_and_bad_arguments():
  lm = np.array([[1, 1, 0, 1], [2, 2, 0, 2], [3, 0, 3, 1]])
  assert screen.disagreement_order(lm, (3.0, 5.0, 11.0)) == (1, 2, 0)
  apply_fn, w = _linear_model()
  with pytest.raises(InputError, match='permutation'):
    screen.SequentialScreen(apply_fn, 0.5, SCALES, order=(0, 1, 1, 2, 3))
  with pytest.raises(InputError, match='largest bucket'):
    screen.SequentialScreen(apply_fn, 0.5, SCALES, batch_size=64, buckets=(8, 32))
  with pytest.raises(InputError, match='threshold'):
    screen.SequentialScreen(apply_fn, 'high', SCALES)
  with pytest.raises(InputError, match='1 to 16'):
    screen.SequentialScreen(apply_fn, 0.5, SCALES, batch_size=16).screen_batch(
        w, np.zeros((17, 32, 32, 3), np.float32))
  with pytest.raises(InputError):
    screen.SequentialScreen(apply_fn, 0.5, SCALES).screen(w, np.full((2, 32, 32, 3), 2.0, np.float32))
