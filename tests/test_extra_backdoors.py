"""Runs with several backdoors (paper App. H, App. C): saved, checked, selected, evaluated."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, requires_cifar
from scaleup_jax import checkpoint, poison, train
from scaleup_jax.integrity import IntegrityError
from scaleup_jax.validation import InputError
from train.configs import badnets_resnet20

EXTRA = (3, 5)


def multi_config():
  config = badnets_resnet20.get_config('quick')
  config.attack_kwargs.extra_targets = EXTRA
  config.attack_kwargs.extra_rate = 0.1
  return config


@pytest.fixture(scope='module')
def multi_run(tmp_path_factory):
  work = tmp_path_factory.mktemp('multi') / 'run'
  train.train_and_evaluate(multi_config(), str(work))
  return work


def test_extra_backdoors_file_round_trip(tmp_path):
  t1 = poison.badnets_trigger(jax.random.key(1), corner='top_left')
  t2 = poison.badnets_trigger(jax.random.key(2), corner='top_right')
  extra = poison.ExtraBackdoors((t1, t2), (4, 7), (np.array([1, 5]), np.array([2, 3, 9])))
  f = tmp_path / 'x.npz'
  poison.save_extra_backdoors(f, extra)
  back = poison.load_extra_backdoors(f)
  assert back.targets == (4, 7)
  np.testing.assert_array_equal(back.triggers[1].pattern, t2.pattern)
  np.testing.assert_array_equal(back.poison_indices[1], [2, 3, 9])
  with pytest.raises(InputError, match='2 triggers, 1 targets'):
    poison.ExtraBackdoors((t1, t2), (4,), (np.array([1]), np.array([2])))


@requires_cifar
def test_run_carries_and_selects_its_backdoors(multi_run):
  run = checkpoint.load_run(multi_run)
  assert checkpoint.num_backdoors(run) == 3
  assert run.extra_backdoors.targets == EXTRA
  metrics = json.loads((multi_run / 'metrics.json').read_text())
  assert [e['target'] for e in metrics['extra_backdoors']] == list(EXTRA)
  assert metrics['poisoning']['extra_backdoors']['num_poisoned'] == [round(0.1 * 256)] * 2
  main = checkpoint.select_backdoor(run, 0)
  assert main.target == run.target == 0 and main.trigger is run.trigger
  for i, target in enumerate(EXTRA, start=1):
    view = checkpoint.select_backdoor(run, i)
    assert view.target == target and view.trigger is run.extra_backdoors.triggers[i - 1]
    assert view.variables is run.variables
  with pytest.raises(InputError, match='backdoor 3 does not exist.*numbered 0 \\(main\\) to 2'):
    checkpoint.select_backdoor(run, 3)


@requires_cifar
def test_altered_extra_file_is_refused(multi_run, tmp_path):
  copy = tmp_path / 'run'
  shutil.copytree(multi_run, copy)
  f = copy / checkpoint.EXTRA_BACKDOORS
  arrays = dict(np.load(f))
  arrays['targets'] = np.array([3, 6])
  np.savez(f, **arrays)
  with pytest.raises(IntegrityError, match='extra_backdoors.npz'):
    checkpoint.load_run(copy)


@requires_cifar
def test_resume_with_other_extra_backdoors_is_refused(multi_run, tmp_path):
  copy = tmp_path / 'run'
  shutil.copytree(multi_run, copy)
  config = multi_config()
  config.attack_kwargs.extra_targets = (3, 6)
  config.num_epochs = 2
  with pytest.raises(IntegrityError, match='extra backdoors'):
    train.train_and_evaluate(config, str(copy))
  # Nothing the run saved was touched.
  assert checkpoint.load_run(copy).extra_backdoors.targets == EXTRA


@requires_cifar
def test_detect_measures_the_chosen_backdoor(multi_run, tmp_path):
  base = [sys.executable, '-m', 'eval.detect', '--ckpt', str(multi_run), '--num_images', '64',
          '--batch_size', '32', '--num_defense_per_class', '2', '--noprogress', '--noplot',
          '--keep_all_poisoned']
  out = tmp_path / 'b2.json'
  r = subprocess.run(base + ['--backdoor', '2', '--out', str(out)], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads(out.read_text())
  assert res['backdoor'] == 2 and res['target_label'] == 5
  r = subprocess.run(base + ['--backdoor', '4'], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 2 and 'backdoor 4 does not exist' in r.stderr
  assert 'Traceback' not in r.stderr


@requires_cifar
def test_multi_label_experiment_pools_every_backdoor(multi_run, tmp_path):
  from scaleup_jax import evaluate, reproduce
  out = reproduce.reproduce(reproduce.ReproduceOptions(
      quick=True, only=('multi_label',), multi_label_ckpts=(str(multi_run),), out=str(tmp_path),
      progress=False, command='test'))
  (row,) = out['experiments']['multi_label']['rows']
  assert row['num_infected'] == 3 and row['labels'] == [0, *EXTRA]
  quick = reproduce.resolve_options(reproduce.ReproduceOptions(quick=True))
  for b in range(3):  # each label's AUROC is eval.detect's for that backdoor (one path)
    opts = evaluate.DetectOptions(
        ckpt=str(multi_run), backdoor=b, num_images=quick.num_images,
        batch_size=quick.batch_size, num_defense_per_class=quick.num_defense_per_class,
        seed=quick.seed, alphas=(), out=str(tmp_path / f'{b}.json'), plot=False, progress=False)
    if row['num_positives'][b] == 0:
      assert np.isnan(row['per_label']['data-free'][b])
      with pytest.raises(InputError, match='ASR = 0'):
        evaluate.evaluate_detection(opts)
      continue
    det = evaluate.evaluate_detection(opts)['detection']
    for mode in ('data-free', 'data-limited'):
      assert row['per_label'][mode][b] == pytest.approx(det[mode]['auroc'])
  # Against one benign set, the pooled AUROC is the positives-weighted mean of the labels'.
  n = np.array(row['num_positives'], float)
  if n.sum():
    for mode in ('data-free', 'data-limited'):
      per = np.nan_to_num(np.array(row['per_label'][mode]))
      assert row[mode] == pytest.approx(float(np.sum(n * per) / n.sum()))
  md = (tmp_path / 'multi_label.md').read_text()
  assert '| run | 3/10 |' in md and 'App. H' in md
  assert (tmp_path / 'multi_label.png').is_file()
