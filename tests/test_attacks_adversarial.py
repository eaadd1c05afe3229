"""PGD, TUAP, the additive trigger and the Label-Consistent trigger against hand-made cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaleup_jax import poison
from scaleup_jax.attacks import adversarial as adv
from scaleup_jax.validation import InputError


def linear_apply(variables, images):
  """A linear classifier on flattened pixels: logits = x W + b."""
  return images.reshape(images.shape[0], -1) @ variables['w'] + variables['b']


def _linear(shape=(4, 4, 1), k=3, seed=0):
  rng = np.random.default_rng(seed)
  d = int(np.prod(shape))
  return {'w': jnp.asarray(rng.normal(size=(d, k)), jnp.float32),
          'b': jnp.asarray(rng.normal(size=(k,)), jnp.float32)}


def _images(n, shape=(4, 4, 1), seed=1, lo=0.0, hi=1.0):
  return np.random.default_rng(seed).uniform(lo, hi, (n, *shape)).astype(np.float32)


def _ce(variables, x, y):
  logits = np.asarray(linear_apply(variables, jnp.asarray(x)), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -logp[np.arange(len(y)), y]


# ------------------------------------------------------------------ PGD
# The linear-model PGD tests share one compiled shape (4 images, 2 steps, random
# start) where they can: compiles dominate the run time on a busy CPU.


def test_pgd_stays_in_eps_ball_and_unit_box_tiny_resnet():
  from scaleup_jax.models import TinyResNet
  model = TinyResNet(num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  apply_fn = lambda v, x: model.apply(v, x, train=False)
  # Include saturated pixels so the [0, 1] projection is exercised.
  x = _images(2, (8, 8, 3), lo=-0.2, hi=1.2).clip(0, 1)
  y = np.array([3, 7])
  eps = 8 / 255
  out = adv.pgd_untargeted(jax.random.key(1), apply_fn, variables, x, y, eps=eps, steps=2)
  out = np.asarray(out)
  assert out.shape == x.shape and out.dtype == np.float32
  assert np.abs(out - x).max() <= eps + 1e-6
  assert out.min() >= 0.0 and out.max() <= 1.0
  assert np.abs(out - x).max() > eps / 2  # It actually moved.


def test_pgd_eps_zero_is_identity():
  v = _linear()
  x = _images(4)
  out = adv.pgd_untargeted(jax.random.key(0), linear_apply, v, x, np.array([0, 1, 2, 0]), eps=0.0,
                           steps=2, random_start=True)
  np.testing.assert_array_equal(np.asarray(out), x)


def test_pgd_one_signed_step_by_hand():
  v = _linear()
  x = _images(4, lo=0.2, hi=0.8)
  y = np.array([0, 1, 2, 0])
  step, eps = 0.03, 0.05
  out = adv.pgd_untargeted(jax.random.key(0), linear_apply, v, x, y, eps=eps, step=step, steps=1,
                           random_start=False)
  # d CE / d x = W (softmax - onehot) for a linear model.
  w = np.asarray(v['w'], np.float64)
  logits = x.reshape(4, -1) @ w + np.asarray(v['b'])
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  grad = (p - np.eye(3)[y]) @ w.T
  expected = np.clip(x + step * np.sign(grad).reshape(x.shape), 0, 1)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-6)


def test_pgd_increases_loss_and_projects():
  v = _linear()
  x = _images(4)
  y = np.asarray(jnp.argmax(linear_apply(v, jnp.asarray(x)), -1))
  eps = 0.1
  # Two steps of size eps from a random start reach the signed-gradient corner.
  out = np.asarray(adv.pgd_untargeted(jax.random.key(0), linear_apply, v, x, y, eps=eps,
                                      step=eps, steps=2))
  assert np.all(_ce(v, out, y) > _ce(v, x, y))
  assert np.abs(out - x).max() <= eps + 1e-6 and 0 <= out.min() and out.max() <= 1


def test_pgd_same_key_same_result_and_key_matters():
  v = _linear()
  x, y = _images(4), np.array([0, 1, 2, 0])
  run = lambda k: np.asarray(adv.pgd_untargeted(jax.random.key(k), linear_apply, v, x, y,
                                                eps=0.1, step=0.0, steps=2))
  np.testing.assert_array_equal(run(0), run(0))
  assert not np.array_equal(run(0), run(1))


def test_pgd_dataset_pads_last_batch_and_matches_one_call():
  v = _linear()
  x = _images(4)
  y = np.array([0, 1, 2, 0])
  kw = dict(eps=0.05, step=0.02, steps=2)
  whole = np.asarray(adv.pgd_untargeted(jax.random.key(3), linear_apply, v, x, y, **kw))
  batched = adv.pgd_dataset(jax.random.key(3), linear_apply, v, x, y, batch_size=3,
                            progress=False, **kw)
  assert isinstance(batched, np.ndarray) and batched.dtype == np.float32
  assert batched.shape == x.shape
  np.testing.assert_allclose(batched, whole, atol=1e-6)


@pytest.mark.parametrize('kwargs, match', [
    (dict(eps=-0.1), 'eps must be in'),
    (dict(step=-1.0), 'step size'),
    (dict(steps=1.5), 'steps must be'),
])
def test_pgd_rejects_bad_budget(kwargs, match):
  with pytest.raises(InputError, match=match):
    adv.pgd_untargeted(jax.random.key(0), linear_apply, _linear(), _images(2), np.array([0, 1]),
                       **kwargs)


def test_pgd_rejects_bad_inputs():
  v = _linear()
  with pytest.raises(InputError, match=r'\[0, 1\]'):
    adv.pgd_untargeted(jax.random.key(0), linear_apply, v, _images(2) + 1.0, np.array([0, 1]))
  with pytest.raises(InputError, match=r'labels must have shape \(2,\)'):
    adv.pgd_untargeted(jax.random.key(0), linear_apply, v, _images(2), np.array([0, 1, 2]))
  with pytest.raises(InputError, match='unknown PGD options'):
    adv.pgd_dataset(jax.random.key(0), linear_apply, v, _images(2), np.array([0, 1]), alpha=0.1)


# ------------------------------------------------------------------ TUAP


def _toy_for_uap(shape=(8, 8, 1), c=5.0, threshold=1.6, seed=0):
  """Two classes; logit(1) - logit(0) = c * (<x, u> - threshold) with u balanced +-1."""
  d = int(np.prod(shape))
  u = np.where(np.random.default_rng(seed).permutation(d) % 2 == 0, 1.0, -1.0)
  w = np.zeros((d, 2), np.float32)
  w[:, 1] = c * u
  v = {'w': jnp.asarray(w), 'b': jnp.asarray([0.0, -c * threshold], jnp.float32)}
  return v, u.reshape(shape).astype(np.float32)


def test_tuap_respects_eps_and_finds_the_known_direction():
  v, u = _toy_for_uap()
  x = _images(64, (8, 8, 1), lo=0.3, hi=0.5)
  eps = 0.05
  delta = adv.targeted_uap(jax.random.key(0), linear_apply, v, x, target=1, eps=eps, steps=12,
                           batch_size=16, lr=0.01, progress=False)
  assert isinstance(delta, np.ndarray) and delta.dtype == np.float32 and delta.shape == u.shape
  assert np.abs(delta).max() <= eps + 1e-7
  # The gradient of log p(1) w.r.t. delta has the sign of u everywhere.
  np.testing.assert_allclose(delta, eps * u, atol=1e-6)
  before = adv.uap_fooling_rate(linear_apply, v, x, np.zeros_like(delta), target=1)
  after = adv.uap_fooling_rate(linear_apply, v, x, delta, target=1, batch_size=24)
  assert before < 0.1 and after > 0.9


def test_tuap_is_seeded_and_validates():
  v, _ = _toy_for_uap()
  x = _images(20, (8, 8, 1), lo=0.3, hi=0.5)
  run = lambda k: adv.targeted_uap(jax.random.key(k), linear_apply, v, x, 1, eps=0.2, steps=2,
                                   batch_size=4, lr=0.003, progress=False)
  np.testing.assert_array_equal(run(0), run(0))
  with pytest.raises(InputError, match='eps must be in'):
    adv.targeted_uap(jax.random.key(0), linear_apply, v, x, 1, eps=2.0, progress=False)
  with pytest.raises(InputError, match='target must be'):
    adv.targeted_uap(jax.random.key(0), linear_apply, v, x, -1, progress=False)


def test_fooling_rate_can_leave_out_target_class():
  v, u = _toy_for_uap()
  x = _images(10, (8, 8, 1), lo=0.3, hi=0.5)
  delta = 0.05 * u
  labels = np.array([1] * 5 + [0] * 5)
  full = adv.uap_fooling_rate(linear_apply, v, x, delta, 1)
  part = adv.uap_fooling_rate(linear_apply, v, x, delta, 1, labels=labels)
  preds = np.asarray(jnp.argmax(linear_apply(v, jnp.asarray(np.clip(x + delta, 0, 1))), -1))
  assert full == pytest.approx(np.mean(preds == 1))
  assert part == pytest.approx(np.mean(preds[5:] == 1))
  with pytest.raises(InputError, match='delta shape'):
    adv.uap_fooling_rate(linear_apply, v, x, np.zeros((4, 4, 1)), 1)
  with pytest.raises(InputError, match='target class 1'):
    adv.uap_fooling_rate(linear_apply, v, x, delta, 1, labels=np.ones(10, int))


# ------------------------------------------------------------------ AdditiveTrigger


def test_additive_zero_delta_is_identity_numpy_and_jax():
  trig = adv.AdditiveTrigger(np.zeros((4, 4, 3), np.float32))
  assert trig.kind == 'additive'
  x = _images(2, (4, 4, 3))
  y = trig.apply(x)
  assert isinstance(y, np.ndarray) and y.dtype == np.float32
  np.testing.assert_array_equal(y, x)
  x64 = x.astype(np.float64)
  assert trig.apply(x64).dtype == np.float64
  xj = jnp.asarray(x)
  yj = trig.apply(xj)
  assert isinstance(yj, jax.Array)
  np.testing.assert_array_equal(np.asarray(yj), x)


def test_additive_clips_and_is_jittable():
  delta = np.zeros((2, 2, 1), np.float32)
  delta[0, 0], delta[1, 1], delta[0, 1] = 0.5, -0.5, 0.1
  trig = adv.AdditiveTrigger(delta)
  x = np.full((3, 2, 2, 1), 0.8, np.float32)
  x[:, 1, 1] = 0.2
  expected = np.array([[1.0, 0.9], [0.8, 0.0]], np.float32)[..., None]
  np.testing.assert_allclose(trig.apply(x), np.broadcast_to(expected, x.shape), atol=1e-7)
  np.testing.assert_allclose(trig.apply(x[0]), expected, atol=1e-7)  # A single image.
  jitted = jax.jit(trig.apply)(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(jitted), trig.apply(x), atol=1e-7)
  with pytest.raises(InputError, match='does not match image shape'):
    trig.apply(np.zeros((1, 3, 3, 1), np.float32))
  with pytest.raises(InputError, match='float pixels'):
    trig.apply(np.zeros((1, 2, 2, 1), np.uint8))


def test_additive_round_trips_through_arrays_and_rejects_bad_delta():
  delta = np.random.default_rng(0).uniform(-0.03, 0.03, (4, 4, 3)).astype(np.float32)
  trig = adv.AdditiveTrigger(delta)
  back = adv.AdditiveTrigger.from_arrays(trig.arrays())
  np.testing.assert_array_equal(back.delta, delta)
  via_kind = poison.trigger_from_arrays({'kind': np.asarray('additive'), **trig.arrays()})
  assert isinstance(via_kind, adv.AdditiveTrigger)
  np.testing.assert_array_equal(via_kind.delta, delta)
  with pytest.raises(InputError, match="'delta'"):
    adv.AdditiveTrigger.from_arrays({'mask': delta})
  with pytest.raises(InputError, match=r'shape \(H, W, C\)'):
    adv.AdditiveTrigger(np.zeros((4, 4)))
  with pytest.raises(InputError, match=r'\[-1, 1\]'):
    adv.AdditiveTrigger(np.full((2, 2, 1), 2.0))


# ------------------------------------------------------------------ Label-Consistent

# The 16 white pixels of BackdoorBox tests/test_LabelConsistent.py (= Turner et
# al.'s "all-corners" trigger), written out by hand; the other 20 pixels of the
# four 3x3 corners are black.
_WHITE = [(-1, -1), (-1, -3), (-3, -1), (-2, -2),
          (0, -1), (1, -2), (2, -3), (2, -1),
          (0, 0), (1, 1), (2, 2), (2, 0),
          (-1, 0), (-1, 2), (-2, 1), (-3, 0)]


def _corner_mask(h=32, w=32, size=3):
  m = np.zeros((h, w), bool)
  m[:size, :size] = m[:size, -size:] = m[-size:, :size] = m[-size:, -size:] = True
  return m


def test_label_consistent_reference_matches_backdoorbox_pixels():
  trig = adv.label_consistent_trigger(jax.random.key(0))
  assert isinstance(trig, poison.Trigger)
  corners = _corner_mask()
  np.testing.assert_array_equal(trig.mask, np.repeat(corners[..., None], 3, -1).astype(np.float32))
  white = np.zeros((32, 32), bool)
  for r, c in _WHITE:
    white[r, c] = True
  expected = np.where(white, 1.0, 0.0)
  np.testing.assert_array_equal(trig.pattern, np.repeat(expected[..., None], 3, -1))
  x = _images(2, (32, 32, 3))
  y = trig.apply(x)
  np.testing.assert_array_equal(y[:, ~corners], x[:, ~corners])
  np.testing.assert_array_equal(y[:, corners], np.broadcast_to(expected[corners][:, None], (2, 36, 3)))


def test_label_consistent_checkerboard_any_size_and_one_corner():
  trig = adv.label_consistent_trigger(jax.random.key(0), (16, 16, 1), size=4,
                                      pattern='checkerboard')
  assert trig.mask[..., 0].sum() == 4 * 16
  for rows, cols in [(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(12, 16)),
                     (slice(12, 16), slice(0, 4)), (slice(12, 16), slice(12, 16))]:
    block = trig.pattern[rows, cols, 0]
    assert np.all(block[:, 1:] != block[:, :-1]) and np.all(block[1:] != block[:-1])
  for r, c in [(0, 0), (0, 15), (15, 0), (15, 15)]:  # White at every image corner.
    assert trig.pattern[r, c, 0] == 1.0
  one = adv.label_consistent_trigger(jax.random.key(0), (8, 8, 3), corners=1, margin=1)
  expected = np.zeros((8, 8, 3))
  expected[4:7, 4:7] = 1
  np.testing.assert_array_equal(one.mask, expected)


def test_label_consistent_amplitude_and_additive_variant():
  low = adv.label_consistent_trigger(jax.random.key(0), amplitude=0.25)
  assert set(np.unique(low.pattern[low.mask == 1])) == {0.375, 0.625}
  x = _images(3, (32, 32, 3))
  full = adv.label_consistent_trigger(jax.random.key(0))
  additive = adv.label_consistent_additive_trigger(jax.random.key(0))
  np.testing.assert_allclose(additive.apply(x), full.apply(x), atol=1e-7)
  a = 32 / 255
  reduced = adv.label_consistent_additive_trigger(jax.random.key(0), amplitude=a)
  y = reduced.apply(x)
  corners = _corner_mask()
  assert np.abs(y - x).max() <= a + 1e-6
  np.testing.assert_array_equal(y[:, ~corners], x[:, ~corners])
  white = full.pattern[..., 0] == 1
  assert np.all(y[:, white & corners] >= x[:, white & corners])
  assert np.all(y[:, ~white & corners] <= x[:, ~white & corners])


def test_label_consistent_is_deterministic_and_validates():
  a = adv.label_consistent_trigger(jax.random.key(0), size=3)
  b = adv.label_consistent_trigger(jax.random.key(0), size=3)
  c = adv.label_consistent_trigger(jax.random.key(1), size=3)
  for t in (b, c):
    np.testing.assert_array_equal(a.mask, t.mask)
    np.testing.assert_array_equal(a.pattern, t.pattern)
  with pytest.raises(InputError, match="'reference' is Turner"):
    adv.label_consistent_trigger(jax.random.key(0), size=4)
  with pytest.raises(InputError, match='overlap'):
    adv.label_consistent_trigger(jax.random.key(0), (5, 5, 3))
  with pytest.raises(InputError, match='amplitude must be'):
    adv.label_consistent_trigger(jax.random.key(0), amplitude=0.0)
  with pytest.raises(InputError, match='corners must be'):
    adv.label_consistent_trigger(jax.random.key(0), corners=5)
  with pytest.raises(InputError, match="unknown patch pattern 'dots'"):
    adv.label_consistent_trigger(jax.random.key(0), pattern='dots')
