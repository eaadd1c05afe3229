"""Training pieces: augmentation, the pure step, the config quick switch, resume."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, requires_cifar
from scaleup_jax import models, train
from scaleup_jax.validation import InputError
from train.configs import badnets_resnet20, clean_resnet20


def test_augment_is_crop_of_padded_image_or_its_flip():
  x = jax.random.uniform(jax.random.key(0), (16, 8, 8, 3))
  y = train.augment(jax.random.key(1), x, pad=2)
  assert y.shape == x.shape
  padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(16):
    crops = [padded[i, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
    crops += [c[:, ::-1] for c in crops]
    assert any(np.array_equal(np.asarray(y[i]), c) for c in crops), i
  # Deterministic per key.
  np.testing.assert_array_equal(y, train.augment(jax.random.key(1), x, pad=2))


@pytest.mark.parametrize('augmentation', [True, False])
def test_batch_prep_augments_only_when_asked(augmentation):
  x = jax.random.uniform(jax.random.key(0), (8, 8, 8, 3))
  flags = jnp.zeros((8,), bool)
  y = train.make_batch_prep(augmentation=augmentation)(jax.random.key(1), x, flags)
  if augmentation:
    np.testing.assert_array_equal(y, train.augment(jax.random.key(1), x))
    assert not np.array_equal(y, x)
  else:
    np.testing.assert_array_equal(y, x)


def test_train_step_is_pure_and_learns():
  model = models.TinyResNet(num_classes=3)
  config = clean_resnet20.get_config('quick')
  config.num_epochs, config.learning_rate = 1, 0.05
  tx = optax.sgd(0.05, 0.9)
  state = train.create_train_state(jax.random.key(0), model, (32, 32, 3), tx)
  labels = jnp.arange(12) % 3  # learnable: brightness encodes the class
  images = 0.25 * labels[:, None, None, None] + 0.2 * jax.random.uniform(
      jax.random.key(1), (12, 32, 32, 3))
  batch = {'image': images, 'label': labels}
  step = jax.jit(train.train_step)
  s1, m1 = step(state, batch)
  s1b, m1b = step(state, batch)
  np.testing.assert_array_equal(m1['loss'], m1b['loss'])  # same inputs, same outputs
  s = s1
  for _ in range(30):
    s, m = step(s, batch)
  assert float(m['loss']) < float(m1['loss']) * 0.5
  assert int(s.step) == 31
  # Batch statistics are carried in the state and updated.
  assert not np.allclose(jax.tree.leaves(s.batch_stats)[0], jax.tree.leaves(state.batch_stats)[0])


def test_configs_and_quick_switch():
  full = badnets_resnet20.get_config()
  quick = badnets_resnet20.get_config('quick')
  assert full.model == 'resnet20' and full.attack == 'badnets' and full.poison_rate == 0.1
  assert quick.model == 'tiny' and quick.max_train_examples == 256 and quick.attack == 'badnets'


@requires_cifar
def test_train_main_smoke_and_resume(tmp_path):
  work = tmp_path / 'run'
  cmd = [sys.executable, '-m', 'train.main', '--config',
         str(ROOT / 'train/configs/badnets_resnet20.py') + ':quick', '--workdir', str(work)]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  metrics = json.loads((work / 'metrics.json').read_text())
  assert metrics['epochs'] == 1 and 0 <= metrics['ba'] <= 1 and 0 <= metrics['asr'] <= 1
  assert metrics['num_poisoned_train'] == round(0.1 * 256)
  assert (work / 'trigger.npz').is_file() and (work / 'checkpoints' / '1').is_dir()
  # A second run with more epochs resumes from epoch 1 instead of starting over.
  r = subprocess.run(cmd + ['--config.num_epochs=2'], cwd=ROOT, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'Resuming from epoch 1' in r.stdout
  metrics = json.loads((work / 'metrics.json').read_text())
  assert [h['epoch'] for h in metrics['history']] == [1, 2]


@requires_cifar
def test_same_seed_same_poison(tmp_path):
  config = badnets_resnet20.get_config('quick')
  a, _ = train.prepare_data(config, jax.random.key(5))
  b, _ = train.prepare_data(config, jax.random.key(5))
  np.testing.assert_array_equal(a.poison_indices, b.poison_indices)
  assert a.train.images.tobytes() == b.train.images.tobytes()
  c, _ = train.prepare_data(config, jax.random.key(6))
  assert not np.array_equal(a.poison_indices, c.poison_indices)


def test_train_main_unknown_attack_is_one_line(tmp_path):
  cmd = [sys.executable, '-m', 'train.main', '--config',
         str(ROOT / 'train/configs/badnets_resnet20.py') + ':quick', '--workdir',
         str(tmp_path / 'r'), '--config.attack=badnett', f'--config.data_dir={tmp_path}']
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert 'error:' in r.stderr and 'Traceback' not in r.stderr
  assert "unknown attack 'badnett'" in r.stderr  # checked before the data is loaded


@pytest.mark.parametrize('epochs', [0, -3])
def test_train_rejects_a_schedule_without_epochs(tmp_path, epochs):
  config = badnets_resnet20.get_config()
  config.num_epochs = epochs
  with pytest.raises(InputError, match=f'num_epochs must be at least 1, got {epochs}'):
    train.train_and_evaluate(config, str(tmp_path / 'r'))
  assert not (tmp_path / 'r').exists()  # fails before it creates the run directory


def test_predict_labels_compiles_once_across_new_weights():
  """The training loop's evaluation reuses one compiled function as the weights change."""
  model = models.get_model('tiny', 10)
  traces = []

  def apply_fn(variables, x):
    traces.append(x.shape)  # runs at trace time only
    return model.apply(variables, x, train=False)

  images = np.random.default_rng(0).uniform(size=(70, 32, 32, 3)).astype(np.float32)
  outs = []
  for seed in range(3):  # three "epochs": new weights, same shapes
    variables = model.init(jax.random.key(seed), images[:1], train=False)
    outs.append(train.predict_labels(apply_fn, variables, images, batch_size=32))
  assert len(traces) == 1, traces
  assert all(o.shape == (70,) for o in outs)
  v = model.init(jax.random.key(2), images[:1], train=False)
  np.testing.assert_array_equal(outs[2], np.argmax(model.apply(v, images, train=False), -1))
