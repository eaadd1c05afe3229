"""Triggers and poisoned-index selection against their definitions."""

import jax
import numpy as np
import pytest

from scaleup_jax import poison
from scaleup_jax.validation import InputError


@pytest.mark.parametrize('corner, rows, cols', [
    ('bottom_right', slice(28, 31), slice(28, 31)),
    ('top_left', slice(1, 4), slice(1, 4)),
    ('top_right', slice(1, 4), slice(28, 31)),
    ('bottom_left', slice(28, 31), slice(1, 4)),
])
def test_badnets_patch_location_and_values(corner, rows, cols):
  trig = poison.badnets_trigger(jax.random.key(0), (32, 32, 3), size=3, corner=corner)
  expected_mask = np.zeros((32, 32, 3))
  expected_mask[rows, cols] = 1
  np.testing.assert_array_equal(trig.mask, expected_mask)
  x = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
  y = trig.apply(x)
  np.testing.assert_array_equal(y[:, rows, cols], np.broadcast_to(trig.pattern[rows, cols], (2, 3, 3, 3)))
  outside = expected_mask == 0
  np.testing.assert_array_equal(y[:, outside], x[:, outside])
  assert y.dtype == np.float32


def test_badnets_patterns():
  key = jax.random.key(0)
  white = poison.badnets_trigger(key, pattern='white')
  assert white.pattern[white.mask == 1].min() == 1.0
  black = poison.badnets_trigger(key, pattern='black', size=4)
  assert black.mask.sum() == 4 * 4 * 3 and black.pattern.max() == 0.0
  board = poison.badnets_trigger(key, pattern='checkerboard', size=2, margin=0)
  np.testing.assert_array_equal(board.pattern[-2:, -2:, 0], [[0, 1], [1, 0]])
  with pytest.raises(InputError, match="unknown patch pattern 'gray'"):
    poison.badnets_trigger(key, pattern='gray')
  rand = poison.badnets_trigger(key)
  vals = rand.pattern[rand.mask == 1]
  assert 0 <= vals.min() and vals.max() <= 1 and len(np.unique(vals)) > 10
  np.testing.assert_array_equal(rand.pattern, poison.badnets_trigger(jax.random.key(0)).pattern)
  assert not np.array_equal(rand.pattern, poison.badnets_trigger(jax.random.key(1)).pattern)


@pytest.mark.parametrize('alpha', [0.0, 0.2, 1.0])
def test_blended_is_alpha_blend(alpha):
  trig = poison.blended_trigger(jax.random.key(0), (8, 8, 3), alpha=alpha)
  x = np.random.default_rng(1).random((4, 8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(trig.apply(x), (1 - alpha) * x + alpha * trig.pattern, atol=1e-6)
  if alpha == 0:
    np.testing.assert_array_equal(trig.apply(x), x)


def test_apply_trigger_works_on_jax_arrays():
  trig = poison.badnets_trigger(jax.random.key(0), (8, 8, 3), size=2)
  x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 3))
  np.testing.assert_allclose(trig.apply(x), trig.apply(np.asarray(x)), atol=1e-7)


@pytest.mark.parametrize('rate, sources', [(0.1, None), (0.004, None), (0.05, (1, 2)), (0.0, None)])
def test_poison_indices_rate_and_filter(rate, sources):
  labels = np.repeat(np.arange(10), 100)
  idx = poison.select_poison_indices(jax.random.key(0), labels, rate, target=0, source_classes=sources)
  assert len(idx) == round(rate * len(labels))
  assert len(np.unique(idx)) == len(idx)
  assert np.all(labels[idx] != 0)
  if sources:
    assert set(labels[idx]) <= set(sources)
  again = poison.select_poison_indices(jax.random.key(0), labels, rate, 0, sources)
  np.testing.assert_array_equal(idx, again)


def test_poison_indices_depend_on_key_and_can_include_target():
  labels = np.repeat(np.arange(10), 100)
  a = poison.select_poison_indices(jax.random.key(0), labels, 0.1, 0)
  b = poison.select_poison_indices(jax.random.key(1), labels, 0.1, 0)
  assert not np.array_equal(a, b)
  c = poison.select_poison_indices(jax.random.key(0), labels, 1.0, 0, include_target=True)
  np.testing.assert_array_equal(c, np.arange(1000))


def test_poison_rate_too_high_names_the_numbers():
  labels = np.repeat(np.arange(10), 10)
  with pytest.raises(InputError, match='asks for 50 images but only 20'):
    poison.select_poison_indices(jax.random.key(0), labels, 0.5, 0, source_classes=(1, 2))


def test_poison_dataset_and_test_set():
  rng = np.random.default_rng(0)
  images = rng.random((50, 8, 8, 3)).astype(np.float32)
  labels = np.arange(50) % 5
  trig = poison.badnets_trigger(jax.random.key(0), (8, 8, 3), size=2)
  idx = poison.select_poison_indices(jax.random.key(3), labels, 0.2, target=2)
  p_img, p_lab = poison.poison_dataset(images, labels, idx, trig, target=2)
  np.testing.assert_array_equal(p_lab[idx], 2)
  rest = np.setdiff1d(np.arange(50), idx)
  np.testing.assert_array_equal(p_img[rest], images[rest])
  np.testing.assert_array_equal(p_img[idx], trig.apply(images[idx]))
  again, _ = poison.poison_dataset(images, labels, idx, trig, 2)
  assert again.tobytes() == p_img.tobytes()  # bit-identical
  t_img, t_lab, t_idx = poison.poisoned_test_set(images, labels, trig, target=2)
  assert np.all(t_lab != 2) and len(t_idx) == 40


@pytest.mark.parametrize('name', ['badnet', 'blend', ''])
def test_unknown_attack_is_named_by_the_one_registry(name):
  from scaleup_jax import attacks
  with pytest.raises(InputError, match=f"unknown attack {name!r}; expected 'none' or one of"):
    attacks.check_attack_name(name)
  assert not hasattr(poison, 'ATTACKS')  # one registry of attacks: scaleup_jax.attacks.ATTACKS


def test_trigger_file_round_trip(tmp_path):
  trig = poison.badnets_trigger(jax.random.key(0), (8, 8, 3), size=2)
  poison.save_trigger(tmp_path / 't.npz', trig, 3, [1, 2])
  back, target = poison.load_trigger(tmp_path / 't.npz')
  assert target == 3 and back.kind == 'mask'
  np.testing.assert_array_equal(back.mask, trig.mask)
  np.testing.assert_array_equal(back.pattern, trig.pattern)
  assert not (tmp_path / 't.tmp.npz').exists()


def test_unknown_trigger_kind():
  with pytest.raises(InputError, match="unknown trigger kind 'spiral'"):
    poison.trigger_from_arrays({'kind': np.asarray('spiral')})


def test_multi_trigger_cycles_triggers(tmp_path):
  keys = jax.random.split(jax.random.key(0), 2)
  t0 = poison.badnets_trigger(keys[0], (8, 8, 3), size=2, corner='top_left')
  t1 = poison.badnets_trigger(keys[1], (8, 8, 3), size=2, corner='bottom_right')
  multi = poison.MultiTrigger((t0, t1))
  x = np.random.default_rng(0).random((5, 8, 8, 3)).astype(np.float32)
  y = multi.apply(x)
  for i in range(5):
    np.testing.assert_array_equal(y[i], (t0 if i % 2 == 0 else t1).apply(x[i]))
  poison.save_trigger(tmp_path / 'm.npz', multi, 0)
  back, _ = poison.load_trigger(tmp_path / 'm.npz')
  np.testing.assert_array_equal(back.apply(x), y)
  yj = jax.jit(multi.apply)(jax.numpy.asarray(x))
  np.testing.assert_allclose(np.asarray(yj), y)


@pytest.mark.parametrize('arg, attack, target, kw', [
    ('pattern=white,target=3', 'badnets', 3, {'pattern': 'white', 'size': 5}),
    ('pattern=checkerboard,target=0,size=3', 'badnets', 0, {'pattern': 'checkerboard', 'size': 3}),
    ('pattern=blend,target=9', 'blended', 9, {'alpha': 0.2}),
])
def test_failure_map_config(arg, attack, target, kw):
  from train.configs import failure_map_resnet20
  config = failure_map_resnet20.get_config(arg)
  assert (config.attack, config.target_label, config.num_epochs) == (attack, target, 5)
  assert {k: config.attack_kwargs[k] for k in kw} == kw


@pytest.mark.parametrize('arg, match', [('pattern=gray', 'unknown failure-map pattern'),
                                        ('target=10', 'not a CIFAR-10 class'),
                                        ('pattern=blend,size=3', 'patch patterns'),
                                        ('colour=red', 'unknown failure-map override')])
def test_failure_map_config_errors(arg, match):
  from train.configs import failure_map_resnet20
  with pytest.raises(ValueError, match=match):
    failure_map_resnet20.get_config(arg)
