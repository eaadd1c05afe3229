"""eval.reproduce: bootstrap intervals, scale-set slicing, Fig. 2 confidences, quick end to end."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conftest import ROOT, requires_cifar
from scaleup_jax import evaluate, integrity, reproduce, scaleup, train
from scaleup_jax.reproduce import experiments
from scaleup_jax.validation import InputError
from train.configs import badnets_resnet20


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
  work = tmp_path_factory.mktemp('quick') / 'run'
  train.train_and_evaluate(badnets_resnet20.get_config('quick'), str(work))
  return work


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_perfect_separation_is_exactly_one():
  ci = reproduce.bootstrap_auroc(np.arange(30.0), 100 + np.arange(20.0), 500, seed=3)
  assert ci['auroc'] == 1.0 and ci['low'] == 1.0 and ci['high'] == 1.0


def test_bootstrap_identical_distributions_contain_half():
  x = np.random.default_rng(0).normal(size=300)
  ci = reproduce.bootstrap_auroc(x, x.copy(), 1000, seed=0)
  assert ci['auroc'] == pytest.approx(0.5)
  assert ci['low'] < 0.5 < ci['high'] and ci['high'] - ci['low'] < 0.2


def test_bootstrap_point_matches_sklearn_with_ties_and_is_seeded():
  rng = np.random.default_rng(1)
  b = rng.integers(0, 6, 200) / 5.0  # SPC-like, many ties
  p = rng.integers(2, 6, 150) / 5.0
  ci = reproduce.bootstrap_auroc(b, p, 300, seed=7)
  y = np.r_[np.zeros(b.size), np.ones(p.size)]
  assert ci['auroc'] == pytest.approx(roc_auc_score(y, np.r_[b, p]), abs=1e-12)
  assert ci['low'] <= ci['auroc'] <= ci['high']
  assert ci == reproduce.bootstrap_auroc(b, p, 300, seed=7)
  assert ci != reproduce.bootstrap_auroc(b, p, 300, seed=8)


def test_bootstrap_rejects_empty():
  with pytest.raises(InputError, match='benign and poisoned'):
    reproduce.bootstrap_auroc([], [1.0])


# ---------------------------------------------------------------- scale-set slicing


def _toy_classifier(x):
  """A label that moves under amplification: the decile of the mean pixel."""
  return jnp.clip(jnp.floor(x.mean(axis=(1, 2, 3)) * 10), 0, 9).astype(jnp.int32)


@pytest.mark.parametrize('subset', list(reproduce.SCALE_SETS) + [(5.0, 11.0), (15.0, 3.0)])
def test_sliced_label_matrix_equals_recomputing_with_the_subset(subset):
  x = jax.random.uniform(jax.random.key(0), (64, 4, 4, 3)) * jnp.linspace(0.02, 0.5, 64)[:, None, None, None]
  full = np.asarray(scaleup.scaleup_labels(_toy_classifier, x, reproduce.ALL_SCALES))
  direct = np.asarray(scaleup.scaleup_labels(_toy_classifier, x, sorted(subset)))
  sliced = reproduce.slice_label_matrix(full, reproduce.ALL_SCALES, subset)
  np.testing.assert_array_equal(sliced, direct)
  np.testing.assert_array_equal(scaleup.spc_from_labels(sliced), scaleup.spc_from_labels(direct))
  assert len(np.unique(scaleup.spc_from_labels(full))) > 1  # the case is not trivial


def test_slice_rejects_missing_scale():
  with pytest.raises(InputError, match='missing'):
    reproduce.slice_label_matrix(np.zeros((2, 3), int), (3.0, 5.0), (3.0, 4.0))


def test_label_matrix_of_a_model_matches_the_detector(tiny_model):
  model, variables = tiny_model
  apply_fn = lambda v, x: model.apply(v, x, train=False)
  x = np.asarray(jax.random.uniform(jax.random.key(1), (10, 32, 32, 3)))
  lm = reproduce.label_matrix(apply_fn, variables, x, reproduce.ALL_SCALES, batch_size=4)
  preds, spc = scaleup.make_detector(apply_fn)(variables, x)
  sliced = reproduce.slice_label_matrix(lm, reproduce.ALL_SCALES, scaleup.DEFAULT_SCALES)
  np.testing.assert_array_equal(sliced[:, 0], preds)
  np.testing.assert_allclose(scaleup.spc_from_labels(sliced), spc)


@pytest.mark.parametrize('all_poisoned, positives', [(False, [1.0]), (True, [1.0, 1.0, 0.0])])
def test_consistency_scores_successful_or_all_poisoned(all_poisoned, positives):
  # Column 0 is the prediction, the rest the labels under two scales; target 0.
  lms = {'benign': np.array([[1, 2, 2], [2, 2, 1]]),
         'poisoned': np.array([[0, 0, 0], [1, 1, 1], [2, 0, 0]]),
         'defense': np.array([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0], [2, 2, 0], [2, 0, 2]])}
  s = experiments._consistency_scores(lms, 0, 3, all_poisoned=all_poisoned)
  np.testing.assert_allclose(s['data-free'][0], [0.0, 0.5])
  np.testing.assert_allclose(s['data-free'][1], positives)
  assert len(s['data-limited'][1]) == len(positives)


# ---------------------------------------------------------------- Fig. 2, noise


def test_fig2_confidence_at_n1_is_max_softmax(tiny_model):
  model, variables = tiny_model
  apply_fn = lambda v, x: model.apply(v, x, train=False)
  x = np.asarray(jax.random.uniform(jax.random.key(2), (6, 32, 32, 3)))
  preds, conf = reproduce.scaled_confidences(apply_fn, variables, x, reproduce.FIG2_FACTORS,
                                             batch_size=4)
  probs = np.asarray(jax.nn.softmax(apply_fn(variables, x), axis=-1))
  assert conf.shape == (6, 11) and preds.shape == (6,)
  np.testing.assert_array_equal(preds, probs.argmax(-1))
  np.testing.assert_allclose(conf[:, 0], probs.max(-1), rtol=1e-5, atol=1e-6)
  assert np.all((conf >= 0) & (conf <= 1))


def test_noise_label_matrix_is_batch_invariant_and_exact_at_zero(tiny_model):
  model, variables = tiny_model
  apply_fn = lambda v, x: model.apply(v, x, train=False)
  x = np.asarray(jax.random.uniform(jax.random.key(3), (6, 32, 32, 3)))
  key = jax.random.key(5)
  a = reproduce.noise_label_matrix(apply_fn, variables, x, (0.0, 0.5), 3, key, batch_size=4)
  b = reproduce.noise_label_matrix(apply_fn, variables, x, (0.0, 0.5), 3, key, batch_size=6)
  assert a.shape == (2, 6, 4)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a[0], np.repeat(a[0][:, :1], 4, axis=1))  # std 0: no change


def test_one_registry_names_every_experiment_with_its_three_parts():
  assert list(reproduce.EXPERIMENTS) == [
      'table1', 'fig2', 'fig3', 'roc', 'ablation_scales', 'ablation_defense_size',
      'ablation_noise', 'poison_rate', 'trigger_size', 'multi_label', 'multi_trigger', 'adaptive',
      'robustness']
  for name, e in reproduce.EXPERIMENTS.items():
    assert e.compute.__module__ == 'scaleup_jax.reproduce.experiments', name
    assert e.table.__module__ == 'scaleup_jax.reproduce.report', name
    assert e.plot.__module__ == 'scaleup_jax.reproduce.plots', name
    assert e.title


def test_experiments_module_neither_draws_nor_writes_files():
  import ast
  tree = ast.parse(Path(experiments.__file__).read_text())
  imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
  imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
  assert not any(m.startswith('matplotlib') for m in imported)
  called = {n.func.attr for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
  assert not called & {'write_text', 'write_bytes', 'savefig', 'open', 'atomic_write_text'}


def _score_files(tmp_path):
  path = tmp_path / 'scaleup.json'
  path.write_text(json.dumps({'class_stats': {}}))
  integrity.save_npz_checked(path.with_suffix('.scores.npz'), 'scores',
                             benign_score=np.array([0.2, 0.4]), benign_pred=np.array([1, 2]),
                             poisoned_score=np.array([1.0, 0.8, 0.6]),
                             poisoned_pred=np.array([0, 0, 1]),
                             successful=np.array([True, True, False]))
  return path


def test_stored_scores_reads_the_checked_score_file(tmp_path):
  b, p = experiments._stored_scores(_score_files(tmp_path), 'data-free')
  np.testing.assert_array_equal(b, [0.2, 0.4])
  np.testing.assert_array_equal(p, [1.0, 0.8])  # the successful positives only


def test_stored_scores_refuses_an_altered_or_truncated_score_file(tmp_path):
  path = _score_files(tmp_path)
  npz = path.with_suffix('.scores.npz')
  arrays = dict(np.load(npz))
  arrays['benign_score'] = np.array([0.2, 0.9])  # edited, checksum entry kept
  np.savez(npz, **arrays)
  with pytest.raises(integrity.IntegrityError, match='benign_score.*differs from its checksum'):
    experiments._stored_scores(path, 'data-free')
  npz.write_bytes(npz.read_bytes()[:40])
  with pytest.raises(integrity.IntegrityError, match='not a readable .npz'):
    experiments._stored_scores(path, 'data-free')


def test_unknown_experiment_is_an_input_error():
  with pytest.raises(InputError, match="unknown experiment"):
    reproduce.resolve_options(reproduce.ReproduceOptions(only=('fig9',)))


# ---------------------------------------------------------------- end to end


@requires_cifar
def test_quick_reproduce_end_to_end(quick_run, tmp_path):
  out = tmp_path / 'repro'
  cmd = [sys.executable, '-m', 'eval.reproduce', '--quick', '--ckpt', str(quick_run),
         '--clean_ckpt', str(quick_run), '--adaptive_ckpt', str(quick_run),
         '--rate_ckpts', str(quick_run), '--multi_label_ckpts', str(quick_run),
         '--multi_trigger_ckpts', str(quick_run), '--out', str(out), '--noprogress']
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((out / 'reproduce.json').read_text())
  exps = res['experiments']
  assert list(exps) == list(reproduce.EXPERIMENTS)
  assert exps['trigger_size']['status'] == 'skipped'
  assert 'needs models' in exps['trigger_size']['reason']
  summary = (out / 'summary.md').read_text()
  assert 'python -m eval.reproduce --quick' in summary
  for name, e in exps.items():
    if name == 'trigger_size':
      continue
    assert e['status'] == 'ok', (name, e)
    assert (out / e['md']).is_file() and (out / e['png']).is_file()
    assert f"({e['png']})" in summary and 'Command: `python -m eval.reproduce' in (out / e['md']).read_text()
  # table1 reuses compare.compare, and its bootstrap columns reproduce compare's AUROCs.
  assert (out / 'table1' / 'compare.json').is_file()
  cis = exps['table1']['auroc'][quick_run.name]
  assert set(cis) == {'SCALE-UP (data-free)', 'SCALE-UP (data-limited)'}
  for ci in cis.values():
    assert ci['matches_compare'] and ci['low'] <= ci['auroc'] <= ci['high']
  # Table 1's cells are eval.detect's AUROCs on the same model, images and seed (one path).
  quick = reproduce.resolve_options(reproduce.ReproduceOptions(quick=True))
  detect = evaluate.evaluate_detection(evaluate.DetectOptions(
      ckpt=str(quick_run), num_images=quick.num_images, batch_size=quick.batch_size,
      num_defense_per_class=quick.num_defense_per_class, seed=quick.seed, alphas=(),
      out=str(tmp_path / 'detect.json'), plot=False, progress=False))
  for title, mode in (('SCALE-UP (data-free)', 'data-free'), ('SCALE-UP (data-limited)', 'data-limited')):
    assert cis[title]['auroc'] == detect['detection'][mode]['auroc'], title
  # The same split and scales give the same SCALE-UP AUROC in table1, roc and the S = {3..11} row.
  free = cis['SCALE-UP (data-free)']['auroc']
  assert exps['roc']['models'][quick_run.name]['data-free']['auroc'] == pytest.approx(free)
  row = next(r for r in exps['ablation_scales']['rows'] if r['size'] == 5)
  assert row['data-free'] == pytest.approx(free)
  assert len(exps['ablation_scales']['rows']) == len(reproduce.SCALE_SETS)
  assert exps['fig2']['factors'] == list(range(1, 12))
  assert len(exps['fig2']['models']['attacked model']['benign']['mean']) == 11
  assert [r['per_class'] for r in exps['ablation_defense_size']['rows']] == [1, 2, 5]
  assert len(exps['ablation_noise']['rows']) == 2
  assert all(0.0 <= r['benign_to_target'] <= 1.0 for r in exps['ablation_noise']['rows'])
  # Fig. 7b: all triggered images as positives never exceed the successful ones' count.
  (rate_row,) = exps['poison_rate']['rows']
  assert set(rate_row) >= {'data-free', 'data-limited', 'data-free (all)', 'data-limited (all)'}
  if rate_row['asr'] == 1.0:
    assert rate_row['data-free (all)'] == pytest.approx(rate_row['data-free'])
  # One backdoor: the multi-label row is table1's SCALE-UP cell.
  (ml_row,) = exps['multi_label']['rows']
  assert ml_row['num_infected'] == 1 and ml_row['data-free'] == pytest.approx(free)
  # One trigger: the multi-trigger row is that cell too, and its one trigger is the pool.
  (mt_row,) = exps['multi_trigger']['rows']
  assert mt_row['num_triggers'] == 1 and mt_row['data-free'] == pytest.approx(free)
  assert mt_row['per_trigger']['data-limited'] == [pytest.approx(ml_row['data-limited'])]
  assert exps['adaptive']['models']['adaptive']['asr'][0] == pytest.approx(
      exps['adaptive']['models']['reference']['asr'][0])
  for r in exps['adaptive']['models'].values():
    assert len(r['benign_to_target']) == 3 and r['num_benign'] > 0
    assert all(0.0 <= v <= 1.0 for v in r['benign_to_target'])
  # App. L: without noise both settings are table1's cell; with noise the queries change.
  (rob,) = exps['robustness']['models']
  assert [r['std'] for r in rob['rows']] == [0.0, 0.05]
  zero, noisy = rob['rows']
  assert zero['benign']['data-free'] == zero['poisoned']['data-free'] == pytest.approx(free)
  assert zero['asr'] == pytest.approx(exps['adaptive']['models']['reference']['asr'][0])
  assert 0 < noisy['num_positives'] and set(noisy['benign']) == {'data-free', 'data-limited'}

  # An --only run updates its experiments and keeps the others with their commands;
  # table1 reuses the compare rows already in its directory.
  stamp = (out / 'table1' / quick_run.name / 'scaleup.json').stat().st_mtime_ns
  again = reproduce.reproduce(reproduce.ReproduceOptions(
      quick=True, ckpt=str(quick_run), clean_ckpt=str(quick_run), only=('table1', 'fig3'),
      out=str(out), progress=False, command='second run'))
  exps2 = again['experiments']
  assert list(exps2) == list(reproduce.EXPERIMENTS)
  assert exps2['fig3']['command'] == exps2['table1']['command'] == 'second run'
  assert exps2['fig2'] == exps['fig2'] and exps2['fig2']['command'].startswith('python -m eval.reproduce')
  assert (out / 'table1' / quick_run.name / 'scaleup.json').stat().st_mtime_ns == stamp
  assert exps2['table1']['auroc'] == exps['table1']['auroc']
  summary = (out / 'summary.md').read_text()
  assert 'Made by `second run`' in summary and 'Made by `python -m eval.reproduce --quick' in summary


@pytest.mark.parametrize('arg, rate, size, epochs, name', [
    ('', 0.1, 3, 5, 'badnets_rate0.1_size3'),
    ('rate=0.02', 0.02, 3, 5, 'badnets_rate0.02_size3'),
    ('size=7', 0.1, 7, 5, 'badnets_rate0.1_size7'),
    ('rate=0.05, epochs=10', 0.05, 3, 10, 'badnets_rate0.05_size3_e10'),
    ('rate=0.004,epochs=8,augment=0', 0.004, 3, 8, 'badnets_rate0.004_size3_e8_noaug'),
    ('attack=physical,size=7,epochs=6,augment=0', 0.1, 7, 6, 'physical_rate0.1_size7_e6_noaug'),
    ('augment=0', 0.1, 3, 5, 'badnets_rate0.1_size3_e5_noaug'),
])
def test_sweep_config_overrides_and_run_names(arg, rate, size, epochs, name):
  from train.configs import badnets_sweep_resnet20 as sweep_cfg
  config = sweep_cfg.get_config(arg)
  assert (config.poison_rate, config.attack_kwargs.size, config.num_epochs) == (rate, size, epochs)
  assert config.augment == ('augment=0' not in arg)
  assert sweep_cfg.workdir_name(rate, size, epochs, config.augment, config.attack) == name
  # PhysicalBA distorts every training image, clean and poisoned (physical_resnet20.py).
  physical = 'attack=physical' in arg
  assert config.attack == ('physical' if physical else 'badnets')
  assert ('transform' in config.attack_kwargs) == physical


@pytest.mark.parametrize('arg', ['epochs=', 'lr=0.1', 'rate', 'augment=no', 'attack=wanet'])
def test_sweep_config_rejects_unknown_overrides(arg):
  from train.configs import badnets_sweep_resnet20 as sweep_cfg
  with pytest.raises(InputError, match=re.escape('expected rate=R, size=S, epochs=E, augment=0|1')):
    sweep_cfg.get_config(arg)


def test_sweep_models_split_rate_and_size_sweeps(tmp_path):
  from train.configs import badnets_sweep_resnet20 as sweep_cfg
  def fake_run(name, rate, size, attack='badnets', finished=True, **extra):
    d = tmp_path / name
    (d / 'checkpoints').mkdir(parents=True)
    (d / 'trigger.npz').write_bytes(b'')
    (d / 'config.json').write_text(json.dumps(
        {'attack': attack, 'poison_rate': rate, 'attack_kwargs': {'size': size},
         'target_label': sweep_cfg.SWEEP_TARGET, 'source_classes': [], **extra}))
    if finished:
      (d / 'metrics.json').write_text('{}')
  base = sweep_cfg.workdir_name(sweep_cfg.BASE_RATE, sweep_cfg.BASE_SIZE)
  fake_run(base, sweep_cfg.BASE_RATE, sweep_cfg.BASE_SIZE)
  fake_run('r01', 0.01, sweep_cfg.BASE_SIZE)
  fake_run('s5', sweep_cfg.BASE_RATE, 5)
  fake_run('lowrate_s5', 0.01, 5)  # a stronger trigger for a low-rate point: Fig. 7b only
  fake_run('other', sweep_cfg.BASE_RATE * 2, 5)  # on neither sweep's axis
  fake_run('blend', sweep_cfg.BASE_RATE, sweep_cfg.BASE_SIZE, attack='blended')
  fake_run('phys', sweep_cfg.BASE_RATE, sweep_cfg.BASE_SIZE, attack='physical')
  fake_run('unfinished', 0.02, sweep_cfg.BASE_SIZE, finished=False)
  # The issue #22 models in the same folder: low rate, other size, but other recipes.
  fake_run('multi_label_k1', 0.03, 4, target_label=8, infected_labels={'k': 1})
  fake_run('partial', 0.03, 4, source_classes=[1, 3, 7])
  fake_run('other_target', 0.03, 4, target_label=8)
  assert [p.name for p in reproduce.sweep_models('rate', tmp_path)] == [base, 'lowrate_s5', 'r01']
  # Fig. 7a has a PhysicalBA curve; Fig. 7b is BadNets only.
  assert [p.name for p in reproduce.sweep_models('size', tmp_path)] == [base, 'phys', 's5']
  assert reproduce.sweep_models('rate', tmp_path / 'absent') == []


def _stub_sweep_ctx(tmp_path, runs):
  """A Context stand-in for ``experiments._sweep``: ``runs`` maps a path to
  (rate, epochs, poisoned labels always the target?)."""
  from types import SimpleNamespace
  rng = np.random.default_rng(0)
  num_scales = len(reproduce.ALL_SCALES) + 1
  def lm(n, low):  # label matrices over ALL_SCALES, never the target 0
    return rng.integers(low, 10, size=(n, num_scales))
  labels = {p: {'benign': lm(40, 1), 'defense': lm(50, 0),
                'poisoned': np.zeros((30, num_scales), int) if run[2] else lm(30, 1)}
            for p, run in runs.items()}
  ctx = SimpleNamespace(
      opts=SimpleNamespace(command='cmd'), out=tmp_path,
      eval_set=lambda p: SimpleNamespace(run=SimpleNamespace(
          config=SimpleNamespace(poison_rate=runs[p][0], num_epochs=runs[p][1],
                                 **(runs[p][3] if len(runs[p]) > 3 else {})), target=0),
          test=SimpleNamespace(num_classes=10)),
      labels=lambda p: labels[p])
  ctx.scaleup_scores = lambda p, all_poisoned=False: experiments._scores_from_labels(
      labels[p], 0, 10, reproduce.DEFAULT_SCALES, all_poisoned=all_poisoned)
  return ctx


def test_sweep_point_whose_backdoor_never_took_is_reported_not_fatal(tmp_path):
  """A sweep model with ASR 0 (e.g. a very low poisoning rate) has no successful
  positives: its successful-positive AUROCs are NaN ('–'), its '(all)' ones computed."""
  runs = {tmp_path / 'took': (0.1, 5, True), tmp_path / 'never': (0.004, 5, False)}
  outcome = experiments._sweep(_stub_sweep_ctx(tmp_path, runs), list(runs), 'poison_rate',
                               lambda c: c.poison_rate, all_poisoned=True)
  out = reproduce.render(tmp_path, 'poison_rate', outcome, 'cmd')
  never, took = out['rows']  # sorted by rate
  assert never['asr'] == 0.0 and np.isnan(never['data-free']) and np.isnan(never['data-limited'])
  assert 0.0 <= never['data-free (all)'] <= 1.0
  assert took['asr'] == 1.0 and took['data-free'] == 1.0  # always-target poisoned: SPC 1
  md = (tmp_path / 'poison_rate.md').read_text()
  assert '| never | 0.004 | badnets, 5 epochs | 0.000 | – | – |' in md and 'ASR 0' in md
  assert 'grouped by training schedule' not in md  # one schedule: no note
  assert (tmp_path / 'poison_rate.png').exists()


def test_sweep_groups_models_by_training_schedule(tmp_path):
  """A low-rate point retrained on a longer schedule is its own group, after the
  base schedule's points, and the table says which schedule each row used."""
  runs = {tmp_path / 'r0.1': (0.1, 5, True), tmp_path / 'r0.05': (0.05, 5, False),
          tmp_path / 'r0.05_e10': (0.05, 10, True)}
  outcome = experiments._sweep(_stub_sweep_ctx(tmp_path, runs), list(runs), 'poison_rate',
                               lambda c: c.poison_rate, all_poisoned=True)
  out = reproduce.render(tmp_path, 'poison_rate', outcome, 'cmd')
  assert [(Path(r['ckpt']).name, r['epochs']) for r in out['rows']] == [
      ('r0.05', 5), ('r0.1', 5), ('r0.05_e10', 10)]
  assert out['rows'][2]['data-free'] == 1.0 and np.isnan(out['rows'][0]['data-free'])
  md = (tmp_path / 'poison_rate.md').read_text()
  assert '| r0.05_e10 | 0.05 | badnets, 10 epochs | 1.000 |' in md
  assert 'grouped by training schedule' in md


def test_sweep_keeps_attacks_and_augmentation_apart(tmp_path):
  """Same epochs, another attack or no crop+flip: separate curves (Fig. 7a PhysicalBA,
  the low-rate point trained without augmentation)."""
  runs = {tmp_path / 'b3': (0.1, 6, True, {'size': 3}), tmp_path / 'b5': (0.1, 6, True, {'size': 5}),
          tmp_path / 'p3': (0.1, 6, True, {'size': 3, 'attack': 'physical', 'augment': False}),
          tmp_path / 'n3': (0.1, 6, True, {'size': 3, 'augment': False})}
  outcome = experiments._sweep(_stub_sweep_ctx(tmp_path, runs), list(runs), 'trigger_size',
                               lambda c: c.size)
  assert outcome.extras['schedules'] == ['badnets, 6 epochs', 'badnets, 6 epochs, no crop+flip',
                                         'physical, 6 epochs, no crop+flip']
  assert [Path(r['ckpt']).name for r in outcome.record['rows']] == ['b3', 'b5', 'n3', 'p3']
  out = reproduce.render(tmp_path, 'trigger_size', outcome, 'cmd')
  assert '| p3 | 3 | physical, 6 epochs, no crop+flip | 1.000 |' in (tmp_path / 'trigger_size.md').read_text()
  assert out['rows'][3]['attack'] == 'physical' and out['rows'][3]['augment'] is False


def test_rate_sweep_draws_another_trigger_size_as_its_own_curve(tmp_path):
  """Fig. 7b's low-rate point with a 5x5 trigger is not on the 3x3 curve: its schedule
  names the size; the trigger-size sweep, whose x axis is the size, never does."""
  size = lambda s: {'attack_kwargs': {'size': s}, 'augment': False}
  runs = {tmp_path / 'r0.1': (0.1, 6, True, size(3)), tmp_path / 'r0.02': (0.02, 6, False, size(3)),
          tmp_path / 'r0.004_s5': (0.004, 6, True, size(5))}
  outcome = experiments._sweep(_stub_sweep_ctx(tmp_path, runs), list(runs), 'poison_rate',
                               lambda c: c.poison_rate, all_poisoned=True, size_in_schedule=True)
  assert outcome.extras['schedules'] == ['badnets, 6 epochs, no crop+flip',
                                         'badnets, 6 epochs, no crop+flip, 5x5 trigger']
  assert [Path(r['ckpt']).name for r in outcome.record['rows']] == ['r0.02', 'r0.1', 'r0.004_s5']
  by_size = experiments._sweep(_stub_sweep_ctx(tmp_path, runs), list(runs), 'trigger_size',
                               lambda c: c.attack_kwargs['size'])
  assert by_size.extras['schedules'] == ['badnets, 6 epochs, no crop+flip']
