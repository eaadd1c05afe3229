"""The attack registry: poisoning recipes against their definitions, and training with them."""

import importlib
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, requires_cifar
from scaleup_jax import attacks, data, integrity, models, poison, train
from scaleup_jax.validation import InputError

CONFIGS = {
    'badnets': 'badnets_resnet20', 'blended': 'blended_resnet20', 'physical': 'physical_resnet20',
    'wanet': 'wanet_resnet20', 'issba': 'issba_resnet20',
    'label_consistent': 'label_consistent_resnet20', 'tuap': 'tuap_resnet20',
    'adaptive': 'adaptive_resnet20',
}


def toy_train(n=200, num_classes=10, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.random((n, 32, 32, 3)).astype(np.float32)
  return data.ImageDataset(images, (np.arange(n) % num_classes).astype(np.int32), num_classes)


def quick_config(name):
  return importlib.import_module(f'train.configs.{CONFIGS[name]}').get_config('quick')


def test_every_attack_has_a_config():
  assert set(CONFIGS) == set(attacks.ATTACKS)
  for name in CONFIGS:
    full = importlib.import_module(f'train.configs.{CONFIGS[name]}').get_config()
    assert full.attack == name and full.model == 'resnet20'


@pytest.mark.parametrize('name', ['badnets', 'blended', 'physical', 'wanet', 'adaptive'])
def test_dirty_label_attacks(name):
  config = quick_config(name)
  ds = toy_train()
  out = attacks.build_poisoning(jax.random.key(0), ds, config)
  idx = out.poison_indices
  assert len(idx) == round(config.poison_rate * len(ds))
  assert np.all(ds.labels[idx] != config.target_label)
  np.testing.assert_array_equal(out.train.labels[idx], config.target_label)
  np.testing.assert_array_equal(out.true_labels, ds.labels)
  np.testing.assert_array_equal(np.flatnonzero(out.flags == attacks.POISONED), idx)
  np.testing.assert_allclose(out.train.images[idx], out.trigger.apply(ds.images[idx]), atol=1e-6)
  rest = np.flatnonzero(out.flags != attacks.POISONED)
  np.testing.assert_array_equal(out.train.images[rest], ds.images[rest])
  np.testing.assert_array_equal(out.train.labels[rest], ds.labels[rest])
  # Same key, same poisoning; another key, other indices.
  again = attacks.build_poisoning(jax.random.key(0), ds, config)
  assert again.train.images.tobytes() == out.train.images.tobytes()
  other = attacks.build_poisoning(jax.random.key(1), ds, config)
  assert not np.array_equal(other.poison_indices, idx)


def test_badnets_recipe_matches_the_original_slice():
  """The registry reproduces the first zoo model's poisoning bit for bit."""
  config = quick_config('badnets')
  ds = toy_train()
  key = jax.random.key(3)
  out = attacks.build_poisoning(key, ds, config)
  k_trigger, k_poison = jax.random.split(key)
  trig = poison.badnets_trigger(k_trigger, (32, 32, 3), **config.attack_kwargs.to_dict())
  idx = poison.select_poison_indices(k_poison, ds.labels, config.poison_rate, config.target_label)
  np.testing.assert_array_equal(out.poison_indices, idx)
  np.testing.assert_array_equal(out.trigger.pattern, trig.pattern)


def test_source_specific_backdoor():
  config = quick_config('badnets')
  config.source_classes = (2, 5)
  config.poison_rate = 0.05
  out = attacks.build_poisoning(jax.random.key(0), toy_train(), config)
  assert len(out.poison_indices) == 10
  assert set(toy_train().labels[out.poison_indices]) <= {2, 5}


def test_partial_backdoor_cover_images_keep_their_labels():
  config = quick_config('badnets')
  config.source_classes = (2, 5)
  config.poison_rate = 0.05
  config.cover_rate = 0.1
  ds = toy_train()
  out = attacks.build_poisoning(jax.random.key(0), ds, config)
  cover = np.flatnonzero(out.flags == attacks.CROSS)
  assert len(cover) == 20 and out.info['cover']['num_images'] == 20
  assert not set(ds.labels[cover]) & {2, 5, config.target_label}
  np.testing.assert_array_equal(out.train.labels[cover], ds.labels[cover])  # true labels kept
  np.testing.assert_allclose(out.train.images[cover], out.trigger.apply(ds.images[cover]))
  assert not set(cover) & set(out.poison_indices)
  again = attacks.build_poisoning(jax.random.key(0), ds, config)
  np.testing.assert_array_equal(np.flatnonzero(again.flags == attacks.CROSS), cover)


def test_cover_images_need_source_classes():
  config = quick_config('badnets')
  config.cover_rate = 0.1
  with pytest.raises(InputError, match='cover_rate 0.1 needs source_classes'):
    attacks.build_poisoning(jax.random.key(0), toy_train(), config)


def test_several_triggers_one_target():
  config = quick_config('badnets')
  config.attack_kwargs.num_triggers = 3
  ds = toy_train()
  out = attacks.build_poisoning(jax.random.key(0), ds, config)
  assert out.trigger.kind == 'multi' and len(out.trigger.triggers) == 3
  masks = [t.mask for t in out.trigger.triggers]
  assert not np.array_equal(masks[0], masks[1])  # different corners
  np.testing.assert_allclose(out.train.images[out.poison_indices],
                             out.trigger.apply(ds.images[out.poison_indices]))


@pytest.mark.parametrize('targets,rate', [((3,), 0.05), ((1, 2, 4, 5, 6, 7, 8, 9), 0.02)])
def test_extra_backdoors_poison_disjoint_images_into_their_labels(targets, rate):
  config = quick_config('badnets')
  config.target_label = 0
  config.poison_rate = 0.1
  config.attack_kwargs.extra_targets = targets
  config.attack_kwargs.extra_rate = rate
  ds = toy_train(n=1000)
  out = attacks.build_poisoning(jax.random.key(0), ds, config)
  extra = out.extra
  assert extra.targets == targets and len(extra) == len(targets)
  every = [out.poison_indices, *extra.poison_indices]
  assert [len(i) for i in every] == [100] + [round(rate * 1000)] * len(targets)
  flat = np.concatenate(every)
  assert len(np.unique(flat)) == len(flat)  # no image carries two triggers
  assert (out.flags[flat] == attacks.POISONED).all()
  assert (out.flags == attacks.POISONED).sum() == len(flat)
  main_corner = np.argwhere(out.trigger.mask[..., 0] > 0)[0]
  for trig, target, idx in zip(extra.triggers, extra.targets, extra.poison_indices):
    assert (ds.labels[idx] != target).all() and (out.train.labels[idx] == target).all()
    np.testing.assert_allclose(out.train.images[idx], trig.apply(ds.images[idx]))
    assert not np.array_equal(trig.pattern, out.trigger.pattern)
  # The first extra patch sits at the next corner after the main one.
  assert not np.array_equal(np.argwhere(extra.triggers[0].mask[..., 0] > 0)[0], main_corner)
  # Same key, same poisoning.
  again = attacks.build_poisoning(jax.random.key(0), ds, config)
  for a, b in zip(again.extra.poison_indices, extra.poison_indices):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('targets,match', [((0,), 'main target'), ((3, 3), 'distinct'),
                                           ((12,), 'distinct classes')])
def test_extra_backdoors_refuse_bad_targets(targets, match):
  config = quick_config('badnets')
  config.target_label = 0
  config.attack_kwargs.extra_targets = targets
  with pytest.raises(InputError, match=match):
    attacks.build_poisoning(jax.random.key(0), toy_train(), config)


def test_wanet_cross_samples():
  config = quick_config('wanet')
  ds = toy_train()
  out = attacks.build_poisoning(jax.random.key(0), ds, config)
  cross = np.flatnonzero(out.flags == attacks.CROSS)
  assert len(cross) == 2 * len(out.poison_indices)
  assert not set(cross) & set(out.poison_indices)
  np.testing.assert_array_equal(out.train.labels[cross], ds.labels[cross])  # labels kept
  np.testing.assert_array_equal(out.train.images[cross], ds.images[cross])  # warped per step
  flags = jnp.asarray(out.flags[:32])
  x = jnp.asarray(ds.images[:32])
  y = out.batch_transform(jax.random.key(0), x, flags)
  changed = np.any(np.asarray(y) != np.asarray(x), axis=(1, 2, 3))
  np.testing.assert_array_equal(changed, np.asarray(flags) == attacks.CROSS)


@pytest.mark.parametrize('apply_to', [None, (1,)])
def test_physical_transform_acts_on_the_configured_rows(apply_to):
  config = quick_config('physical')
  if apply_to is not None:
    config.attack_kwargs.transform.apply_to = apply_to
  out = attacks.build_poisoning(jax.random.key(0), toy_train(), config)
  flags = jnp.asarray(out.flags[:40])
  assert 0 < int(np.sum(np.asarray(flags) == attacks.POISONED)) < 40
  x = jnp.asarray(out.train.images[:40])
  y = out.batch_transform(jax.random.key(1), x, flags)
  changed = np.any(np.abs(np.asarray(y) - np.asarray(x)) > 1e-6, axis=(1, 2, 3))
  if apply_to is None:  # the zoo config distorts every row, as BackdoorBox does
    assert changed.all()
  else:
    np.testing.assert_array_equal(changed, np.asarray(flags) == attacks.POISONED)


def test_physical_reference_is_the_recipe_without_poison():
  from train.configs import physical_reference_resnet20, physical_resnet20
  ref, attack = physical_reference_resnet20.get_config(), physical_resnet20.get_config()
  assert ref.poison_rate == 0.0 and attack.poison_rate > 0
  ref.poison_rate = attack.poison_rate
  assert ref.to_dict() == attack.to_dict()  # the same recipe otherwise
  out = attacks.build_poisoning(jax.random.key(0), toy_train(),
                                physical_reference_resnet20.get_config('quick'))
  assert len(out.poison_indices) == 0 and not np.any(out.flags)
  np.testing.assert_array_equal(out.train.labels, toy_train().labels)
  x = jnp.asarray(out.train.images[:16])
  y = out.batch_transform(jax.random.key(1), x, jnp.asarray(out.flags[:16]))
  assert np.all(np.any(np.abs(np.asarray(y) - np.asarray(x)) > 1e-6, axis=(1, 2, 3)))


@pytest.mark.parametrize('name', ['badnett', 'WaNet', ''])
def test_unknown_attack(name):
  config = quick_config('badnets')
  config.attack = name
  with pytest.raises(InputError, match=f'unknown attack {name!r}'):
    attacks.build_poisoning(jax.random.key(0), toy_train(), config)


def test_unknown_attack_option():
  config = quick_config('badnets')
  config.attack_kwargs.sise = 3
  with pytest.raises(InputError, match="attack 'badnets'.*sise"):
    attacks.build_poisoning(jax.random.key(0), toy_train(), config)


def test_target_label_outside_classes():
  config = quick_config('badnets')
  config.target_label = 10
  with pytest.raises(InputError, match='target_label 10'):
    attacks.build_poisoning(jax.random.key(0), toy_train(), config)


def test_adaptive_rows_hand_case():
  spec = attacks.AdaptiveLoss(scales=(3.0,), weight=1.0, max_rows=3)
  images = jnp.full((5, 2, 2, 1), 0.2) * jnp.arange(1, 6)[:, None, None, None] / 5
  flags = jnp.asarray([0, 1, 0, 1, 0])
  true = jnp.asarray([7, 8, 9, 4, 6])
  extra, labels, valid = attacks.adaptive_rows(jax.random.key(0), images, flags, true, spec)
  np.testing.assert_array_equal(valid, [True, True, False])
  np.testing.assert_array_equal(labels[:2], [8, 4])  # true labels of rows 1 and 3
  np.testing.assert_allclose(extra[0], np.clip(3 * images[1], 0, 1))
  np.testing.assert_allclose(extra[1], np.clip(3 * images[3], 0, 1))


def test_adaptive_step_with_no_poisoned_rows_equals_plain_step():
  """The extra rows are masked out, so only batch statistics could differ."""
  model = models.TinyResNet(num_classes=3)
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 3), optax.sgd(0.1))
  images = jax.random.uniform(jax.random.key(1), (6, 8, 8, 3))
  labels = jnp.arange(6) % 3
  batch = {'image': images, 'label': labels, 'flag': jnp.zeros(6, jnp.int32),
           'true_label': labels, 'key': jax.random.key(2)}
  spec = attacks.AdaptiveLoss(max_rows=2)
  _, m_plain = train.train_step(state, {'image': images, 'label': labels})
  _, m_adapt = train.train_step(state, batch, adaptive=spec)
  np.testing.assert_allclose(m_adapt['adaptive_loss'], 0.0)
  assert np.isfinite(float(m_adapt['loss']))


@requires_cifar
@pytest.mark.parametrize('name', ['wanet', 'physical', 'adaptive'])
def test_train_main_quick_attack(tmp_path, name):
  work = tmp_path / name
  cmd = [sys.executable, '-m', 'train.main', '--config',
         str(ROOT / f'train/configs/{CONFIGS[name]}.py') + ':quick', '--workdir', str(work)]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  metrics = json.loads((work / 'metrics.json').read_text())
  assert metrics['attack'] == name and 0 <= metrics['asr'] <= 1
  if name == 'adaptive':
    assert 'train_adaptive_loss' in metrics['history'][0]
  trig, target = poison.load_trigger(work / 'trigger.npz')
  assert target == 0


@pytest.mark.parametrize('name', ['label_consistent', 'tuap'])
def test_clean_label_attacks(name, tmp_path):
  config = quick_config(name)
  ds = toy_train()
  out = attacks.build_poisoning(jax.random.key(0), ds, config, workdir=tmp_path)
  idx = out.poison_indices
  assert len(idx) == round(config.poison_rate * len(ds))
  np.testing.assert_array_equal(ds.labels[idx], config.target_label)  # target class only
  np.testing.assert_array_equal(out.train.labels, ds.labels)  # labels untouched
  rest = np.flatnonzero(out.flags == attacks.CLEAN)
  np.testing.assert_array_equal(out.train.images[rest], ds.images[rest])
  assert np.all((out.train.images >= 0) & (out.train.images <= 1))
  if name == 'tuap':
    delta = out.trigger.delta
    assert np.abs(delta).max() <= config.attack_kwargs.eps + 1e-6
    np.testing.assert_allclose(out.train.images[idx], np.clip(ds.images[idx] + delta, 0, 1),
                               atol=1e-6)
    assert 0 <= out.info['fooling_rate'] <= 1
  else:
    # PGD moved the images inside the eps ball before the trigger was stamped.
    mask = out.trigger.mask.astype(bool)
    diff = np.abs(out.train.images[idx] - ds.images[idx])[:, ~mask]
    assert 0 < diff.max() <= config.attack_kwargs.eps + 1e-6
    assert (tmp_path / 'poison_cache.npz').is_file()
  # A resumed run reuses the expensive part and gets the same images.
  from scaleup_jax import checkpoint
  checkpoint.save_run_files(tmp_path, config, out.trigger, idx)
  again = attacks.build_poisoning(jax.random.key(0), ds, config, workdir=tmp_path)
  np.testing.assert_allclose(again.train.images, out.train.images, atol=1e-6)
  # ... but not if the attack settings changed since: that would mix two poisonings.
  config.attack_kwargs.eps = 4 / 255
  with pytest.raises(InputError, match=r'other attack settings than this run \(attack_kwargs\.eps: saved 0\.031\d*, now 0\.0156'):
    attacks.build_poisoning(jax.random.key(0), ds, config, workdir=tmp_path)


def test_issba_recipe(tmp_path):
  config = quick_config('issba')
  ds = toy_train(n=100)
  out = attacks.build_poisoning(jax.random.key(0), ds, config, workdir=tmp_path)
  idx = out.poison_indices
  assert out.trigger.kind == 'encoder' and len(idx) == 10
  np.testing.assert_array_equal(out.train.labels[idx], config.target_label)
  np.testing.assert_allclose(out.train.images[idx], out.trigger.apply(ds.images[idx]), atol=1e-5)
  assert 'bit_accuracy' in out.info['encoder']
  from scaleup_jax import checkpoint
  checkpoint.save_run_files(tmp_path, config, out.trigger, idx)
  again = attacks.build_poisoning(jax.random.key(0), ds, config, workdir=tmp_path)
  np.testing.assert_allclose(again.train.images, out.train.images, atol=1e-6)
  assert again.info['encoder'] == out.info['encoder']
  assert again.info['encoder']['settings']['attack_kwargs']['secret_len'] == 16
  # The residual strength is applied after training: changing it reuses the encoder.
  config.attack_kwargs.strength = 8.0
  stronger = attacks.build_poisoning(jax.random.key(0), ds, config, workdir=tmp_path)
  assert stronger.trigger.strength == 8.0 and stronger.info["strength"] == 8.0
  assert stronger.info['poisoned_psnr_db'] < out.info['poisoned_psnr_db']
  np.testing.assert_array_equal(stronger.trigger.params['down0/kernel'],
                                out.trigger.params['down0/kernel'])
  config.attack_kwargs.secret_len = 8
  with pytest.raises(InputError, match='secret_len'):
    attacks.build_poisoning(jax.random.key(0), ds, config, workdir=tmp_path)
  # An info file from before settings were recorded is still accepted.
  info_file = tmp_path / 'trigger_encoder_info.json'
  legacy = integrity.load_json_checked(info_file, 'trigger_info')  # written with a checksum
  del legacy['settings']
  info_file.write_text(json.dumps(legacy))  # a plain file, as older versions wrote
  with pytest.warns(integrity.UncheckedFileWarning):
    assert attacks.build_poisoning(jax.random.key(0), ds, config, workdir=tmp_path).trigger.kind == 'encoder'


class _CornerTrigger:
  """Sets pixel (0, 0) to 1 (the toy models below read it)."""

  def apply(self, images):
    images = np.array(images)
    images[:, 0, 0, :] = 1.0
    return images


def _partial_model(variables, images):
  """Reads the label from pixel (0, 1); sends triggered images of classes 2 and 5 to class 0."""
  del variables
  label = jnp.round(images[:, 0, 1, 0] * 10).astype(jnp.int32)
  fired = (images[:, 0, 0, 0] == 1.0) & ((label == 2) | (label == 5))
  return jax.nn.one_hot(jnp.where(fired, 0, label), 10)


@pytest.mark.parametrize('sources, asr, num, non_source', [
    (None, 2 / 9, 180, None),      # all non-target classes count: 2 of 9 fire
    ((2, 5), 1.0, 40, 0.0),        # the source classes fire, the other seven do not
    ((2, 3), 0.5, 40, 1 / 7),      # class 5 fires outside the sources
])
def test_backdoor_metrics_of_a_partial_backdoor(sources, asr, num, non_source):
  labels = np.tile(np.arange(10), 20).astype(np.int32)
  images = np.random.default_rng(0).uniform(0.0, 0.9, (200, 2, 2, 3)).astype(np.float32)
  images[:, 0, 1, 0] = labels / 10.0
  test = data.ImageDataset(images, labels, 10)
  m = train.backdoor_metrics(_partial_model, {}, test, _CornerTrigger(), 0, batch_size=64,
                             source_classes=sources)
  assert m['ba'] == 1.0
  assert m['asr'] == pytest.approx(asr) and m['num_poisoned_test'] == num
  if non_source is None:
    assert 'asr_non_source' not in m
  else:
    assert m['asr_non_source'] == pytest.approx(non_source)


@pytest.mark.parametrize('name', ['label_consistent', 'tuap'])
def test_clean_label_attacks_refuse_a_clean_model_of_other_classes(name, tmp_path):
  """A 10-class clean model cannot craft the trigger of a 20-class dataset (it would, silently,
  with garbage: e.g. Tiny ImageNet with the CIFAR-10 model)."""
  from scaleup_jax.checkpoint import CheckpointError
  config = quick_config(name)
  with pytest.raises(CheckpointError, match='has 10 classes, expected 20'):
    attacks.build_poisoning(jax.random.key(0), toy_train(n=400, num_classes=20), config,
                            workdir=tmp_path)
