"""ISSBA: the reduced StegaStamp encoder/decoder and the EncoderTrigger."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaleup_jax.attacks import issba
from scaleup_jax.validation import InputError

# Tiny architecture so every test runs in seconds on a busy CPU.
TINY = dict(encoder_widths=(4, 8), decoder_widths=(4, 8), secret_map=4, decoder_hidden=16)
L = 8


@pytest.fixture(scope='module')
def images():
  return np.random.default_rng(0).random((64, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope='module')
def trained(images):
  return issba.issba_trigger_from_training(
      jax.random.key(0), images, secret_len=L, steps=3, batch_size=8, progress=False, **TINY)


def test_encoder_and_decoder_shapes(images):
  enc = issba.StegaEncoder(L, (4, 8), 4)
  secret = jnp.ones((2, L))
  variables = enc.init(jax.random.key(0), images[:2], secret)
  assert enc.apply(variables, images[:2], secret).shape == (2, 16, 16, 3)
  out = enc.apply(variables, images[:2], secret, method=issba.StegaEncoder.encode)
  assert out.shape == (2, 16, 16, 3) and float(out.min()) >= 0 and float(out.max()) <= 1
  dec = issba.StegaDecoder(L, (4, 8), 16)
  dvars = dec.init(jax.random.key(1), images[:2])
  assert dec.apply(dvars, images[:5]).shape == (5, L)


def test_default_encoder_is_small():
  enc = issba.StegaEncoder()
  variables = jax.eval_shape(enc.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                             jnp.zeros((1, 16)))
  n = sum(np.prod(p.shape) for p in jax.tree.leaves(variables))
  assert 10_000 < n < 100_000


def test_trigger_shapes_range_dtype(trained, images):
  trig, _ = trained
  assert trig.kind == 'encoder' and trig.secret.shape == (L,) and trig.secret.dtype == np.float32
  y = trig.apply(images[:5])
  assert isinstance(y, np.ndarray) and y.shape == (5, 16, 16, 3) and y.dtype == np.float32
  assert y.min() >= 0 and y.max() <= 1
  # Extra leading dims, a single image, float64 and jax input.
  assert trig.apply(images[:6].reshape(2, 3, 16, 16, 3)).shape == (2, 3, 16, 16, 3)
  np.testing.assert_allclose(trig.apply(images[0]), y[0], atol=1e-6)
  assert trig.apply(images[:2].astype(np.float64)).dtype == np.float64
  yj = trig.apply(jnp.asarray(images[:5]))
  assert isinstance(yj, jax.Array)
  np.testing.assert_allclose(np.asarray(yj), y, atol=1e-5)


def test_residual_is_sample_specific(trained, images):
  trig, _ = trained
  res = trig.apply(images[:4]) - images[:4]
  assert np.abs(res).max() > 0
  assert not np.allclose(res[0], res[1], atol=1e-6)
  assert not np.allclose(res[2], res[3], atol=1e-6)


def test_arrays_round_trip(trained, images, tmp_path):
  trig, _ = trained
  arrays = trig.arrays()
  assert all(isinstance(v, np.ndarray) for v in arrays.values())
  assert {'secret', 'image_shape', 'widths', 'secret_map'} <= set(arrays)
  assert arrays['widths'].dtype == np.int32
  np.savez(tmp_path / 'trig.npz', **arrays)
  back = issba.EncoderTrigger.from_arrays(dict(np.load(tmp_path / 'trig.npz')))
  np.testing.assert_array_equal(back.secret, trig.secret)
  assert back.widths == (4, 8) and back.image_shape == (16, 16, 3) and back.secret_map == 4
  np.testing.assert_array_equal(back.apply(images[:4]), trig.apply(images[:4]))


def test_apply_is_jittable(trained, images):
  trig, _ = trained
  x = jnp.asarray(images[:3])
  np.testing.assert_allclose(np.asarray(jax.jit(trig.apply)(x)), trig.apply(images[:3]),
                             atol=1e-5)


def test_same_key_same_encoder_and_secret(trained, images):
  trig, metrics = trained
  again, metrics2 = issba.issba_trigger_from_training(
      jax.random.key(0), images, secret_len=L, steps=3, batch_size=8, progress=False, **TINY)
  np.testing.assert_array_equal(again.secret, trig.secret)
  for k in trig.params:
    np.testing.assert_array_equal(again.params[k], trig.params[k])
  assert metrics['bit_accuracy'] == metrics2['bit_accuracy']
  other, _ = issba.issba_trigger_from_training(
      jax.random.key(1), images, secret_len=L, steps=1, batch_size=8, progress=False, **TINY)
  assert not np.array_equal(other.params['down0/kernel'], trig.params['down0/kernel'])


def test_metrics_keys(trained):
  _, m = trained
  for k in ('bit_accuracy', 'psnr', 'residual_mean_abs', 'residual_max_abs',
            'secret_bit_accuracy', 'seconds_per_step', 'final_loss'):
    assert np.isfinite(m[k]), k
  assert 0 <= m['bit_accuracy'] <= 1 and m['residual_max_abs'] <= 1
  assert m['num_eval'] == 6 and m['num_train'] == 58


def test_training_reduces_loss(images):
  # With the full residual penalty from step 0 the first loss is dominated by
  # w * mean(residual**2) of the random init; a few Adam steps shrink it.
  _, _, m = issba.train_stegastamp(
      jax.random.key(0), images, secret_len=L, steps=12, batch_size=8, lr=3e-3,
      residual_weight=100.0, warmup_steps=0, ramp_steps=0, progress=False, log_every=1, **TINY)
  assert m['final_loss'] < 0.9 * m['initial_loss']


def test_errors(trained, images):
  trig, _ = trained
  with pytest.raises(InputError, match='secret'):
    issba.EncoderTrigger(params=trig.params, secret=np.ones(L + 1, np.float32),
                         image_shape=(16, 16, 3), widths=(4, 8), secret_map=4)
  with pytest.raises(InputError, match='0/1'):
    issba.EncoderTrigger(params=trig.params, secret=np.full(L, 0.5, np.float32),
                         image_shape=(16, 16, 3), widths=(4, 8), secret_map=4)
  with pytest.raises(InputError, match=r'\(\.\.\., 16, 16, 3\)'):
    trig.apply(np.zeros((2, 32, 32, 3), np.float32))
  with pytest.raises(InputError, match='dtype'):
    trig.apply(np.zeros((2, 16, 16, 3), np.uint8))
  enc = issba.StegaEncoder(L, (4, 8), 4)
  with pytest.raises(InputError, match='secret_len=8'):
    enc.init(jax.random.key(0), images[:2], jnp.zeros((2, L + 2)))
  with pytest.raises(InputError, match='divisible'):
    enc.init(jax.random.key(0), jnp.zeros((2, 15, 15, 3)), jnp.zeros((2, L)))
  with pytest.raises(InputError, match='shape'):
    issba.train_stegastamp(jax.random.key(0), images[0], secret_len=L, steps=1, **TINY)
  with pytest.raises(InputError, match='steps'):
    issba.train_stegastamp(jax.random.key(0), images, secret_len=L, steps=0, **TINY)
  with pytest.raises(InputError, match='lack'):
    issba.EncoderTrigger.from_arrays({'secret': trig.secret})


@pytest.mark.parametrize('strength', [0.5, 2.0, 4.0])
def test_strength_scales_the_residual_before_clipping(trained, images, strength):
  import dataclasses
  trig, _ = trained
  x = images[:4]
  secret = np.broadcast_to(trig.secret, (4, trig.secret_len))
  base = np.asarray(trig.module.apply(trig.variables(), x, secret))  # the unclipped residual
  assert np.abs(base).max() > 0
  np.testing.assert_allclose(trig.apply(x), np.clip(x + base, 0, 1), atol=1e-5)
  strong = dataclasses.replace(trig, strength=strength)
  got = strong.apply(x)
  np.testing.assert_allclose(got, np.clip(x + strength * base, 0, 1), atol=1e-5)
  back = issba.EncoderTrigger.from_arrays(strong.arrays())
  assert back.strength == strength
  np.testing.assert_array_equal(back.apply(x), got)


def test_strength_defaults_to_one_for_old_arrays_and_is_validated(trained, images):
  trig, _ = trained
  arrays = trig.arrays()
  del arrays['strength']
  assert issba.EncoderTrigger.from_arrays(arrays).strength == 1.0
  import dataclasses
  for bad in (0.0, -1.0, float('nan')):
    with pytest.raises(InputError, match='strength must be a finite number > 0'):
      dataclasses.replace(trig, strength=bad)
