"""The failure map (#19): hand-computed mechanism pieces, the report and figures from a synthetic
JSON, the entry point's errors, and one end-to-end run on a quick model."""

import json

import numpy as np
import pytest

from conftest import requires_cifar
from scaleup_jax.failure_map import experiment, plots, report
from scaleup_jax.validation import InputError

SCALES = (3.0, 5.0, 7.0, 9.0, 11.0)
NAMES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


# ---------------------------------------------------------------------------
# Mechanism, by hand


def test_spc_by_group_by_hand():
  spc = np.array([1.0, 0.6, 0.0, 1.0, 0.2])
  g = experiment.spc_by_group(spc, {'a': np.array([1, 1, 0, 1, 0], bool),
                                    'b': np.array([0, 0, 1, 0, 1], bool),
                                    'none': np.zeros(5, bool)})
  assert g['a'] == {'mean': pytest.approx(2.6 / 3), 'at_one': pytest.approx(2 / 3), 'count': 3}
  assert g['b'] == {'mean': pytest.approx(0.1), 'at_one': 0.0, 'count': 2}
  assert g['none'] == {'mean': None, 'at_one': None, 'count': 0}
  with pytest.raises(InputError, match='mask shape'):
    experiment.spc_by_group(spc, {'bad': np.ones(4, bool)})


def test_where_images_go_by_hand():
  # 4 images, unscaled then x3, x11; target 2, sink 0.
  labels = np.array([[2, 2, 0], [2, 0, 0], [1, 2, 0], [3, 3, 2]])
  w = experiment.where_images_go(labels, 4, (3, 11), target=2, sinks=[0])
  assert w['factors'] == [1.0, 3.0, 11.0] and w['count'] == 4
  np.testing.assert_allclose(w['shares'], [[0, .25, .5, .25], [.25, 0, .5, .25], [.75, 0, .25, 0]])
  assert w['to_target'] == [0.5, 0.5, 0.25]
  assert w['to_sinks'] == [0.0, 0.25, 0.75]
  assert w['top_class'] == [2, 2, 0] and w['top_share'] == [0.5, 0.5, 0.75]
  empty = experiment.where_images_go(np.zeros((0, 3), int), 4, (3, 11), 2)
  assert empty['count'] == 0 and empty['shares'] is None
  with pytest.raises(InputError, match='shape'):
    experiment.where_images_go(labels, 4, (3,), 2)


def test_mechanism_groups_by_hand():
  target = 0
  # Benign: true labels, label matrices over (unscaled, x3, x11).
  b_true = np.array([0, 0, 1, 2])
  b_lm = np.array([[0, 0, 0],    # target class, SPC 1
                   [0, 0, 1],    # target class, SPC 0.5
                   [1, 0, 0],    # other, SPC 0 (goes to 0)
                   [0, 0, 0]])   # other but predicted target, SPC 1
  # Poisoned: two successful (SPC 1 and 0.5), one failed (called 3; SPC 1, must not count).
  p_lm = np.array([[0, 0, 0], [0, 0, 5], [3, 3, 3]])
  m = experiment.mechanism(b_lm, b_true, p_lm, target, 10, (3, 11), sinks=[0])
  s = m['spc']
  assert s['poisoned_successful'] == {'mean': 0.75, 'at_one': 0.5, 'count': 2}
  assert s['poisoned_all']['mean'] == pytest.approx(2.5 / 3) and s['poisoned_all']['count'] == 3
  assert s['benign_target_true'] == {'mean': 0.75, 'at_one': 0.5, 'count': 2}
  assert s['benign_target_pred'] == {'mean': pytest.approx(2.5 / 3), 'at_one': pytest.approx(2 / 3),
                                     'count': 3}
  assert s['benign_other'] == {'mean': 0.5, 'at_one': 0.5, 'count': 2}
  assert s['benign_all']['mean'] == pytest.approx(0.625)
  # Where x11 images go: poisoned successful 1 of 2 to the target, benign 3 of 4.
  assert m['goes_to']['poisoned_successful']['to_target'] == [1.0, 1.0, 0.5]
  assert m['goes_to']['benign']['to_target'] == [0.75, 1.0, 0.75]
  assert m['goes_to']['benign_target_true']['count'] == 2
  with pytest.raises(InputError, match='benign_true'):
    experiment.mechanism(b_lm, b_true[:3], p_lm, target, 10, (3, 11))


def test_trigger_kept_white_vanishes_black_grows():
  clean = np.full((2, 4, 4, 3), 0.5, np.float32)
  white, black = clean.copy(), clean.copy()
  white[:, -2:, -2:] = 1.0
  black[:, -2:, -2:] = 0.0
  w = experiment.trigger_kept(white, clean, (1, 3, 11))
  b = experiment.trigger_kept(black, clean, (1, 3, 11))
  assert w['kept'] == pytest.approx([1.0, 0.0, 0.0])   # clip(3 * 0.5) = 1 = the white patch
  assert b['kept'] == pytest.approx([1.0, 2.0, 2.0])   # |0 - 1| against |0 - 0.5|
  assert experiment.trigger_kept(clean, clean, (3,))['kept'] is None
  with pytest.raises(InputError, match='shape'):
    experiment.trigger_kept(white[:1], clean, (3,))


def test_best_score_skips_scores_over_budget():
  def entry(tpr, auroc, ok):
    return {'label': 'l', 'auroc': auroc, 'alphas': {'0.05': {
        'tpr': {'rate': tpr, 'interval': [0, 1]}, 'fpr': {'rate': 0.05, 'interval': [0, 1]},
        'within_sampling_error': ok, 'reading': None}}}
  res = {'operating_points': {'data-free': entry(0.2, 0.9, True), 'survival': entry(0.5, 0.8, True),
                              'spc_sat': entry(0.5, 0.85, True), 'class_rank': entry(0.9, 0.99, False)}}
  best = experiment.best_score(res)
  assert best['name'] == 'spc_sat' and best['tpr'] == 0.5  # tie on TPR: higher AUROC
  res['operating_points'] = {'class_rank': entry(0.9, 0.99, False)}
  assert experiment.best_score(res)['name'] == 'class_rank'  # nothing within budget: best anyway
  assert experiment.best_score({}) is None


# ---------------------------------------------------------------------------
# What a run is


def test_describe_run_matches_the_training_recipe():
  from train.configs import badnets_sweep_resnet20, failure_map_resnet20
  for pattern in experiment.PATTERNS:
    cfg = failure_map_resnet20.get_config(f'pattern={pattern},target=3').to_dict()
    d = experiment.describe_run(cfg)
    assert (d['pattern'], d['target'], d['variant'], d['on_recipe']) == (pattern, 3, pattern, True)
    assert d['epochs'] == 5 and d['rate'] == 0.1
  assert experiment.PATTERNS == failure_map_resnet20.PATTERNS
  # The sweep's rate-0.1 size-5 model is the map's random_t0 cell.
  sweep = badnets_sweep_resnet20.get_config('rate=0.1,size=5').to_dict()
  assert experiment.describe_run(sweep)['variant'] == 'random'
  zoo = {'attack': 'badnets', 'attack_kwargs': {'size': 3, 'corner': 'bottom_right',
                                                'pattern': 'random'},
         'target_label': 9, 'poison_rate': 0.1, 'num_epochs': 24, 'model': 'resnet20', 'seed': 0}
  d = experiment.describe_run(zoo)
  assert d['variant'] == 'random 3x3, 24 ep' and not d['on_recipe'] and d['target'] == 9
  off = failure_map_resnet20.get_config('pattern=white,target=0,rate=0.05,epochs=8').to_dict()
  assert experiment.describe_run(off)['variant'] == 'white rate 0.05, 8 ep'
  assert experiment.train_command('zoo/failure_map/white_t0', off, None) == (
      'python -m train.main --config train/configs/failure_map_resnet20.py:'
      'pattern=white,target=0,rate=0.05,epochs=8 --workdir zoo/failure_map/white_t0 '
      '--config.progress=False')
  assert experiment.train_command('m', zoo, {'command': 'python -m train.main X'}) == (
      'python -m train.main X')


# ---------------------------------------------------------------------------
# Report and figures from a synthetic JSON


def _record(model, pattern, target, a_df, a_dl, sink, p_lm, b_lm, b_true, cfg_extra=None):
  cfg = {'attack': 'blended' if pattern == 'blend' else 'badnets',
         'attack_kwargs': {'alpha': 0.2} if pattern == 'blend' else {'size': 5, 'pattern': pattern,
                                                                     'corner': 'bottom_right'},
         'target_label': target, 'poison_rate': 0.1, 'num_epochs': 5, 'model': 'resnet20', 'seed': 0,
         **(cfg_extra or {})}
  if model.startswith('zoo/failure_map/'):
    cfg['failure_map'] = {'pattern': pattern, 'target': target}
  mech = experiment.mechanism(np.asarray(b_lm), np.asarray(b_true), np.asarray(p_lm), target, 10,
                              SCALES, [sink])
  mech['trigger_kept'] = {'factors': list(SCALES), 'kept': [0.3, 0.2, 0.1, 0.05, 0.02]}
  op = lambda t: {'tpr': t, 'tpr_interval': [max(t - 0.05, 0), min(t + 0.05, 1)], 'fpr': 0.05,
                  'fpr_interval': [0.03, 0.07], 'auroc': 0.5, 'label': 'x', 'reading': None}
  return {'ckpt': model, **experiment.describe_run(cfg), 'target_name': NAMES[target],
          'train_command': experiment.train_command(model, cfg, {'command': 'python -m train.main'}),
          'eval_command': f'python -m eval.failure_map --models {model} --merge',
          'ba': 0.8, 'asr': 0.99, 'num_benign': len(b_lm), 'num_positives': len(p_lm),
          'positives': 'successful poisoned', 'auroc': {'data-free': a_df, 'data-limited': a_dl},
          'tpr_at_5fpr': {'data-free': op(0.11), 'data-limited': op(0.02)},
          'best_score': {'name': 'spc_sat', **op(0.33)}, 'mechanism': mech,
          'sinks': [sink], 'sink_names': [NAMES[sink]], 'sink': sink,
          'target_is_sink': sink == target, 'class_names': NAMES}


def _synthetic():
  b_true = [0, 0, 3, 3, 5, 5]
  b_lm = [[0] * 6, [0, 0, 0, 0, 0, 1], [3, 3, 0, 0, 0, 0], [3, 3, 3, 0, 0, 0], [5, 0, 0, 0, 0, 0],
          [5, 5, 5, 5, 0, 0]]
  low_p = [[t] + [0] * 5 for t in (3, 3, 3)]            # white, target 3: x3.. all go to 0 (SPC 0)
  sink_p = [[0] * 6 for _ in range(3)]                  # target 0 = sink: SPC 1
  rand_p = [[0] * 6, [0] * 6, [0, 0, 0, 0, 0, 2]]
  models = {
      'zoo/failure_map/white_t0': _record('zoo/failure_map/white_t0', 'white', 0, 0.4508, 0.31, 0,
                                          sink_p, b_lm, b_true),
      'zoo/failure_map/white_t3': _record('zoo/failure_map/white_t3', 'white', 3, 0.2945, 0.28, 0,
                                          low_p, b_lm, b_true),
      'zoo/sweeps/badnets_rate0.1_size5': _record('zoo/sweeps/badnets_rate0.1_size5', 'random', 0,
                                                  0.9123, 0.6012, 0, rand_p, b_lm, b_true),
      'zoo/cifar10_badnets_resnet20': _record(
          'zoo/cifar10_badnets_resnet20', 'random', 0, 0.9331, 0.55, 0, rand_p, b_lm, b_true,
          {'attack_kwargs': {'size': 3, 'pattern': 'random', 'corner': 'bottom_right'},
           'num_epochs': 24}),
  }
  cfg = experiment.FailureMapConfig(num_images=500).record()
  return {'config': cfg, 'commands': ['python -m eval.failure_map --num_images 500'],
          'models': models, 'runtime_s': 1.0}


def test_grid_has_every_pattern_row_and_blank_cells():
  res = _synthetic()
  g = experiment.map_grid(res)
  assert g['rows'] == ['random', 'white', 'black', 'checkerboard', 'blend', 'random 3x3, 24 ep']
  assert g['cols'] == [0, 3] and g['duplicates'] == []
  m = experiment.metric_matrix(res, 'auroc_data_free')
  assert m[1, 0] == pytest.approx(0.4508) and m[1, 1] == pytest.approx(0.2945)
  assert m[0, 0] == pytest.approx(0.9123) and np.isnan(m[0, 1])
  assert np.isnan(m[2:5]).all() and m[5, 0] == pytest.approx(0.9331)
  assert experiment.metric_matrix(res, 'tpr_data_limited')[1, 0] == pytest.approx(0.02)


def test_report_from_synthetic_json():
  res = _synthetic()
  md = report.markdown(res, image_dir='results/failure_map')
  assert '![failure map heatmaps](results/failure_map/heatmap.png)' in md
  # Every model has a table row with its numbers and its commands.
  for name in res['models']:
    assert f'| `{name}` | ' in md
  assert '| `zoo/failure_map/white_t3` | white | cat (3) | 0.1 | 5 | 0.800 | 0.990 | 0.294 | 0.280 |' in md
  assert ('python -m train.main --config train/configs/failure_map_resnet20.py:pattern=white,'
          'target=3 --workdir zoo/failure_map/white_t3 --config.progress=False') in md
  # The grid: missing cells '-', the sink cell marked, the black row empty.
  assert '| white | **0.45** (sink) | 0.29 |' in md
  assert '| black | - | - |' in md and '| random | **0.91** (sink) | - |' in md
  assert 'Not measured yet: black (black square), checkerboard (checkerboard patch), blend' in md
  # Generated readings carry the measured numbers.
  why = md.split('## My trigger is X')[1].split('## The reported')[0]
  assert 'target cat (3): 0.29 / 0.28' in why
  assert 'Data-free AUROC is below 0.7 at every target measured, sink class or not.' in why
  assert 'below chance because the poisoned images are *less* consistent' in why
  assert "The target is the model's sink class" in why
  assert 'only 0% of the x11 poisoned images keep the target label' in why
  assert 'Data-free AUROC is at least 0.7 at every target measured' in why  # random
  # The reported failures: white models are all below 0.6.
  rep = md.split('## The reported failures')[1]
  assert 'white_t3: 0.29; white_t0: 0.45 | yes: every one below 0.6' in rep
  assert 'partly: below 0.6 for white_t3, white_t0' in rep  # #84 also compares random models
  only_sink = dict(res, models={k: v for k, v in res['models'].items() if k != 'zoo/failure_map/white_t3'})
  rep = report.markdown(only_sink).split('## The reported failures')[1]
  assert 'white_t0: 0.45 | yes: every one below 0.6 (only models whose target is a sink class so far)' in rep
  # The hand-written section is kept on regeneration.
  edited = md.replace(report.HAND_PLACEHOLDER, 'The lead says: white squares saturate.')
  again = report.markdown(res, previous=edited)
  assert 'The lead says: white squares saturate.' in again and report.HAND_PLACEHOLDER not in again
  assert report.HAND_PLACEHOLDER in report.markdown(res, previous='no markers here')


def test_explain_names_every_sink_and_a_lost_trigger():
  res = _synthetic()
  rec = res['models']['zoo/failure_map/white_t3']
  rec['sinks'], rec['target_is_sink'] = [0, 3], True
  text = ' '.join(report.explain('zoo/failure_map/white_t3', rec))
  # Benign x11: five of the six images go to airplane (0), none to cat (3).
  assert ("The target is one of the model's sink classes: airplane (0) (83% of the benign x11 "
          'images), cat (3) (0% of the benign x11 images)') in text
  assert 'airplane (0) takes more of them than the target' in text
  assert 'only 0% of the x11 poisoned images keep the target label' in text
  assert 'at or above the poisoned images\' 0.00' not in text  # data-limited is not worse here
  rec['auroc']['data-limited'] = 0.2
  text = ' '.join(report.explain('zoo/failure_map/white_t3', rec))
  assert ('benign images predicted as cat (3) have mean SPC 0.30, at or above the poisoned '
          "images' 0.00") in text


def test_heatmap_and_mechanism_write_pngs(tmp_path):
  paths = plots.write_figures(_synthetic(), str(tmp_path))
  assert [p.split('/')[-1] for p in paths] == ['heatmap.png', 'mechanism.png']
  for p in paths:
    with open(p, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert (tmp_path / 'heatmap.png').stat().st_size > 30_000


def test_run_writes_after_every_model_and_merges(tmp_path, monkeypatch):
  syn = _synthetic()['models']
  calls = []

  def fake(model, config, progress):
    calls.append(model)
    if model == 'boom':
      raise RuntimeError('crash mid-map')
    return json.loads(json.dumps(syn[model]))

  monkeypatch.setattr(experiment, 'evaluate_model', fake)
  cfg = experiment.FailureMapConfig(num_images=500)
  out = tmp_path / 'fm'
  with pytest.raises(RuntimeError, match='crash'):
    experiment.run(['zoo/failure_map/white_t0', 'boom'], str(out), cfg, progress=False)
  kept = experiment.load_results(out)
  assert list(kept['models']) == ['zoo/failure_map/white_t0']  # the finished row survived
  res = experiment.run(['zoo/failure_map/white_t3'], str(out), cfg, merge=True, progress=False,
                       command='cmd2')
  assert list(res['models']) == ['zoo/failure_map/white_t0', 'zoo/failure_map/white_t3']
  assert res['models']['zoo/failure_map/white_t3']['eval_command'] == (
      f'python -m eval.failure_map --models zoo/failure_map/white_t3 --out {out} '
      '--num_images 500 --merge')
  assert (out / 'failure_map.md').is_file() and (out / 'heatmap.png').is_file()
  with pytest.raises(InputError, match='settings differ'):
    experiment.run(['zoo/failure_map/white_t3'], str(out), experiment.FailureMapConfig(), merge=True,
                   progress=False)
  # Without --merge the old rows go.
  res = experiment.run(['zoo/failure_map/white_t3'], str(out), cfg, progress=False, figures=False)
  assert list(experiment.load_results(out)['models']) == ['zoo/failure_map/white_t3']


def test_entry_point_errors_are_one_line(tmp_path, capsys):
  from eval import failure_map
  with pytest.raises(SystemExit) as e:
    failure_map.main(['--models', str(tmp_path / 'nope'), '--out', str(tmp_path / 'o')])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and 'does not exist' in err and '\n' not in err
  unfinished = tmp_path / 'run'
  unfinished.mkdir()
  (unfinished / 'config.json').write_text('{}')
  (unfinished / 'trigger.npz').write_bytes(b'')
  with pytest.raises(SystemExit) as e:
    failure_map.main(['--models', str(unfinished), '--out', str(tmp_path / 'o')])
  err = capsys.readouterr().err
  assert e.value.code == 2
  assert f'warning: skipping {unfinished}: training has not finished' in err
  assert 'error: no finished model to evaluate' in err
  clean = tmp_path / 'clean'
  clean.mkdir()
  (clean / 'config.json').write_text('{}')
  with pytest.raises(SystemExit):
    failure_map.main(['--models', str(clean)])
  assert 'is a clean model' in capsys.readouterr().err


def test_default_models_finds_finished_runs(tmp_path):
  for name, done in (('white_t0', True), ('black_t3', False)):
    d = tmp_path / 'zoo' / 'failure_map' / name
    d.mkdir(parents=True)
    (d / 'config.json').write_text('{}')
    if done:
      (d / 'metrics.json').write_text('{}')
  d = tmp_path / 'zoo' / 'sweeps' / 'badnets_rate0.1_size5'
  d.mkdir(parents=True)
  (d / 'config.json').write_text('{}')
  (d / 'metrics.json').write_text('{}')
  finished, unfinished = experiment.default_models(tmp_path)
  assert finished == ['zoo/failure_map/white_t0', 'zoo/sweeps/badnets_rate0.1_size5']
  assert unfinished == ['zoo/failure_map/black_t3']


# ---------------------------------------------------------------------------
# End to end on a quick model


@pytest.fixture(scope='module')
def quick_white_t0(tmp_path_factory):
  from scaleup_jax import train
  from train.configs import failure_map_resnet20
  work = tmp_path_factory.mktemp('fm') / 'white_t0'
  train.train_and_evaluate(failure_map_resnet20.get_config('pattern=white,target=0,quick'),
                           str(work))
  return work


@requires_cifar
@pytest.mark.slow
def test_entry_point_end_to_end(quick_white_t0, tmp_path, capsys):
  from eval import failure_map
  out = tmp_path / 'out'
  doc = tmp_path / 'docs' / 'failure_map.md'
  rc = failure_map.main(['--models', str(quick_white_t0), '--out', str(out), '--num_images', '40',
                         '--num_defense_per_class', '2', '--batch_size', '32', '--no-progress',
                         '--doc', str(doc)])
  assert rc == 0 and 'wrote' in capsys.readouterr().out
  res = json.loads((out / 'failure_map.json').read_text())
  rec = res['models'][str(quick_white_t0)]
  assert (rec['pattern'], rec['target'], rec['epochs']) == ('white', 0, 1)
  assert 0 <= rec['auroc']['data-free'] <= 1 and 0 <= rec['auroc']['data-limited'] <= 1
  assert set(rec['tpr_at_5fpr']) == {'data-free', 'data-limited'}
  assert rec['best_score']['name'] in experiment.LABEL_SCORES
  for mode in ('data-free', 'data-limited'):
    if rec['tpr_at_5fpr'][mode]['within_sampling_error']:
      assert rec['best_score']['tpr'] >= rec['tpr_at_5fpr'][mode]['tpr']
  # The mechanism reads the same images as evaluate_detection: same SPC, same positives.
  assert rec['spc_agreement_with_evaluate'] == 1.0
  spc = rec['mechanism']['spc']
  if rec['positives'] == 'successful poisoned':
    assert spc['poisoned_successful']['count'] == rec['num_positives']
  assert spc['benign_all']['count'] == rec['num_benign'] == 40
  assert spc['benign_target_true']['count'] + spc['benign_other']['count'] == 40
  shares = np.asarray(rec['mechanism']['goes_to']['benign']['shares'])
  assert shares.shape == (6, 10) and np.allclose(shares.sum(1), 1)
  assert rec['target_is_sink'] == (0 in rec['sinks'])
  assert rec['defender']['num_images'] == 20
  for f in ('failure_map.md', 'heatmap.png', 'mechanism.png'):
    assert (out / f).is_file()
  text = doc.read_text()
  assert '![failure map heatmaps](../out/heatmap.png)' in text and str(quick_white_t0) in text
