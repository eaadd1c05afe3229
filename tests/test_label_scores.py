"""The finer label-only scores (survival scale, saturation tie-break, class rank), the
shared label-matrix builder, and their operating points in ``evaluate_detection``."""

import json

import jax
import numpy as np
import pytest

from conftest import ROOT, requires_cifar
from scaleup_jax import calibration, evaluate, scaleup
from scaleup_jax.validation import InputError


def test_survival_scale_by_hand():
  lm = np.array([[2, 2, 2, 2],   # holds everywhere: the largest factor
                 [2, 2, 5, 2],   # changes at the 2nd factor: survives up to the 1st
                 [2, 5, 2, 2]])  # changes at once: 1
  assert scaleup.survival_scale_from_labels(lm, (3., 5., 7.)).tolist() == [7.0, 3.0, 1.0]


def test_spc_sat_never_reorders_different_spc():
  lm = np.asarray(jax.random.randint(jax.random.key(0), (2000, 6), 0, 3))
  spc = scaleup.spc_from_labels(lm)
  sat = scaleup.spc_sat_from_labels(lm, 0)
  hi, lo = np.meshgrid(np.arange(300), np.arange(300))
  mask = spc[hi] > spc[lo]
  assert np.all(sat[hi][mask] > sat[lo][mask])
  # Equal SPC: consistency on the saturation label ranks lower.
  assert scaleup.spc_sat_from_labels(np.array([[0, 0, 0], [4, 4, 4]]), 0).tolist() == [
      1.0, pytest.approx(1 + 1 / 3)]


def test_select_factors_reads_one_matrix_for_every_grid():
  grid = scaleup.query_grid(scaleup.DEFAULT_SCALES, scaleup.DENSE_SCALES)
  assert grid == scaleup.DENSE_SCALES and len(grid) == 11
  lm = np.asarray(jax.random.randint(jax.random.key(1), (50, 12), 0, 4))
  sub, f = scaleup.select_factors(lm, grid, (3, 5, 7, 9, 11))
  assert f == scaleup.DEFAULT_SCALES
  cols = [0] + [grid.index(s) + 1 for s in scaleup.DEFAULT_SCALES]
  assert np.array_equal(sub, lm[:, cols])
  with pytest.raises(InputError, match='factor 13 is not in the label matrix grid'):
    scaleup.select_factors(lm, grid, (3, 13))


@pytest.mark.parametrize('factors, message', [
    ((3, 2), 'strictly ascending'), ((3, 3), 'strictly ascending'), ((0.5, 3), 'must be >= 1'),
    ((), 'scale set is empty')])
def test_check_factors_errors(factors, message):
  with pytest.raises(InputError, match=message):
    scaleup.check_factors(factors)


def test_label_matrix_fn_matches_the_detector_and_compiles_once(tiny_model):
  model, variables = tiny_model
  apply_fn = lambda v, x: model.apply(v, x)
  images = np.asarray(jax.random.uniform(jax.random.key(2), (8, 32, 32, 3)))
  labels = scaleup.make_label_matrix_fn(apply_fn, scaleup.DEFAULT_SCALES)
  lm = np.asarray(labels(variables, images))
  assert lm.shape == (8, 6) and lm.dtype == np.int32
  preds, spc = scaleup.make_detector(apply_fn)(variables, images)
  assert np.array_equal(lm[:, 0], preds)
  assert np.allclose(scaleup.label_score('spc', lm, scaleup.DEFAULT_SCALES), spc)
  labels(variables, images * 0.5)
  assert labels._cache_size() == 1


def test_data_limited_label_score_equals_the_paper_mode():
  lm = np.asarray(jax.random.randint(jax.random.key(3), (400, 6), 0, 3))
  params = scaleup.fit_label_score('data_limited', lm[:200], scaleup.DEFAULT_SCALES, 3)
  stats = scaleup.fit_class_stats(scaleup.spc_from_labels(lm[:200]), lm[:200, 0], 3, num_scales=5)
  want = scaleup.data_limited_scores(scaleup.spc_from_labels(lm[200:]), lm[200:, 0], stats)
  got = scaleup.label_score('data_limited', lm[200:], scaleup.DEFAULT_SCALES, params)
  assert np.allclose(got, want)
  json.dumps(params)


def test_class_rank_by_hand():
  # Class 0's benign SPC: 0, 0, 0.5, 1 (0.5 scales); class 1 has one image (pooled table).
  fit = np.array([[0, 1], [0, 1], [0, 0], [0, 0], [1, 1]])
  fit = np.concatenate([fit, fit[:, 1:]], axis=1)  # two scales
  fit[2] = [0, 0, 1]  # SPC 0.5
  params = scaleup.fit_label_score('class_rank', fit, (3., 5.), 2)
  assert params['tables'] == {'0': [0.0, 0.0, 0.5, 1.0]}
  test = np.array([[0, 0, 0], [0, 1, 1], [1, 1, 1]])
  # p = (1 + #{>= s}) / (1 + n): class 0 at SPC 1 -> 2/5; at SPC 0 -> 5/5; class 1 pooled
  # (0, 0, .5, 1, 1) at SPC 1 -> 3/6.
  got = scaleup.label_score('class_rank', test, (3., 5.), params)
  assert np.allclose(got, -np.log10([2 / 5, 5 / 5, 3 / 6]))


def test_label_score_errors():
  lm = np.zeros((3, 6), np.int64)
  with pytest.raises(InputError, match="unknown label score 'spcc'"):
    scaleup.label_score('spcc', lm, scaleup.DEFAULT_SCALES)
  with pytest.raises(InputError, match="score 'spc_sat' needs 'saturation'"):
    scaleup.label_score('spc_sat', lm, scaleup.DEFAULT_SCALES)
  with pytest.raises(InputError, match=r'shape \(N, 1 \+ 4\)'):
    scaleup.label_score('survival', lm, (3, 5, 7, 9))
  assert scaleup.score_forwards(scaleup.DENSE_SCALES) == 12


def test_score_variants_mark_the_paper_modes():
  v = evaluate.score_variants('both', (11, 3, 5, 7, 9), scaleup.DENSE_SCALES)
  names = [x.name for x in v]
  assert names[:3] == ['data-free', 'survival', 'spc_sat'] and 'class_rank@dense' in names
  assert {x.name: x.paper for x in v if x.paper} == {'data-free': 'Eq. 1-2',
                                                     'data-limited': 'Eq. 3-4'}
  assert v[0].factors == scaleup.DEFAULT_SCALES
  assert [x.name for x in evaluate.score_variants('data-free', (3, 5))] == [
      'data-free', 'survival', 'spc_sat']


def test_fit_calibration_split_is_a_disjoint_half_per_class():
  labels = np.repeat(np.arange(3), [4, 5, 1])
  fit = evaluate.fit_calibration_split(labels)
  assert [int(fit[labels == k].sum()) for k in range(3)] == [2, 3, 1]


@requires_cifar
@pytest.mark.slow
def test_evaluate_reports_operating_points_that_explain_themselves(tmp_path):
  opts = evaluate.DetectOptions(
      ckpt=str(ROOT / 'zoo' / 'cifar10_badnets_resnet20'), num_images=120,
      num_defense_per_class=15, batch_size=128, out=str(tmp_path / 'detect.json'), plot=False,
      progress=False, save_detectors=str(tmp_path / 'dets'))
  res = evaluate.evaluate_detection(opts)
  ops = res['operating_points']
  assert set(ops) == {'data-free', 'survival', 'spc_sat', 'data-limited', 'class_rank'}
  assert ops['data-free']['paper'] == 'Eq. 1-2' and ops['data-free']['forwards_per_image'] == 6
  # 15 per class: the fitted scores fit on 8 and calibrate on 7 of each class.
  assert ops['data-free']['num_calibration'] == 150 and ops['data-limited']['num_calibration'] == 70
  for entry in ops.values():
    assert set(entry['alphas']) == {'0.01', '0.05', '0.1'}
    for op in entry['alphas'].values():
      lo, hi = op['fpr']['interval']
      assert lo <= op['fpr']['rate'] <= hi and op['fpr']['total'] == 120
      if op['fpr']['count'] == 0 or op['tpr']['count'] == 0:
        assert op['reading'], op
  saved = json.loads((tmp_path / 'detect.json').read_text())
  assert saved['operating_points'] == ops and saved['calibration']['rule'] == 'conformal'
  # The printed report: legend, paper marks, and no zero rate without a reading.
  res['json_path'] = 'x'
  text = evaluate.format_summary(res)
  assert 'legend:' in text and "* = the paper's mode" in text and 'Eq. 1-2' in text
  lines = text.splitlines()
  for i, line in enumerate(lines):
    if '%  ' in line and ('0.0000 [' in line.split('%', 1)[1]):
      assert lines[i + 1].strip().startswith('->'), (line, lines[i + 1])
  # A saved detector reproduces the evaluation's decision and refuses another model.
  from scaleup_jax import checkpoint
  run = checkpoint.load_run(opts.ckpt)
  det = calibration.load_detector(tmp_path / 'dets' / 'data-free_alpha0.05.json',
                                  variables=run.variables, scales=scaleup.DEFAULT_SCALES)
  assert det.threshold.to_dict() == {k: ops['data-free']['alphas']['0.05'][k]
                                     for k in det.threshold.to_dict()}
  flags = det.flag_images(jax.random.key(0), run.apply_fn, run.variables,
                          np.zeros((4, 32, 32, 3), np.float32), batch_size=4)
  assert flags.shape == (4,)
  other = jax.tree.map(lambda a: a, run.variables)
  other['params']['head']['bias'] = other['params']['head']['bias'] + 1e-4  # fine-tuned, say
  with pytest.raises(calibration.CalibrationMismatchError, match='calibrated on model'):
    calibration.load_detector(tmp_path / 'dets' / 'data-free_alpha0.05.json', variables=other)


def _synthetic_result(alphas=(0.01, 0.05, 0.1), n_cal=50):
  """A result dict as evaluate_detection writes it, from synthetic SPC-like scores."""
  rng = np.random.default_rng(0)
  values = np.linspace(0, 1, 6)
  benign_p = np.array([0.3, 0.25, 0.15, 0.1, 0.1, 0.1])
  cal = rng.choice(values, n_cal, p=benign_p)
  held = rng.choice(values, 500, p=benign_p)
  pos = rng.choice(values, 300, p=[0, 0, 0, 0.05, 0.1, 0.85])
  entry = {'label': 'data-free SPC (Eq. 1-2)', 'paper': 'Eq. 1-2', 'forwards_per_image': 6,
           'auroc': 0.93, 'alphas': {}}
  for j, a in enumerate(alphas):
    thr = calibration.calibrate_threshold(cal, a)
    entry['alphas'][f'{a:g}'] = calibration.operating_point(jax.random.key(j), thr, held, pos)
  return {'ckpt': 'zoo/x', 'attack': 'badnets', 'target_label': 0, 'detector': 'scaleup',
          'ba': 0.85, 'asr': 1.0, 'num_benign': 500, 'num_positives': 300,
          'positives': 'successfully attacked poisoned',
          'detection': {'data-free': {'auroc': 0.93}, 'data-limited': {'auroc': 0.5}},
          'operating_points': {'data-free': entry},
          'calibration': {'num_calibration': n_cal, 'rule': 'conformal',
                          'guarantee_short': evaluate.GUARANTEES['conformal'][0]},
          'throughput': {'images_per_second': 1.0, 'batch_size': 8, 'forwards_per_image': 6,
                         'compile_seconds': 1.0, 'device': 'cpu'},
          'json_path': 'x.json'}


def test_summary_names_columns_marks_the_paper_and_explains_zeros():
  text = evaluate.format_summary(_synthetic_result())  # n = 50: 1% cannot be certified
  assert 'legend:' in text and 'Clopper-Pearson' in text
  assert '* data-free SPC (Eq. 1-2)' in text and '* data-limited' in text
  assert 'flags nothing (n small)' in text and 'needs at least 99' in text
  lines = text.splitlines()
  for i, line in enumerate(lines):
    if '%  ' in line and '0.0000 [' in line.split('%', 1)[1]:
      assert lines[i + 1].strip().startswith('->'), line
  assert 'TPR@1%' not in text  # the deterministic-threshold columns are gone from the print


def test_summary_of_a_baseline_says_where_its_numbers_are():
  res = _synthetic_result()
  res.update(detector='strip', detection={'strip': {'auroc': 0.7}})
  res.pop('operating_points')
  text = evaluate.format_summary(res)
  assert 'calibrated for label-matrix scores (SCALE-UP\'s) only' in text and '0.7000' in text


def test_operating_points_report_and_figure(tmp_path):
  from scaleup_jax.operating_points import experiment, report
  res = _synthetic_result(n_cal=1000)
  res['operating_points']['data-free']['curve'] = {'alpha': [0.01, 0.05, 0.1],
                                                   'tpr': [0.1, 0.4, 0.8], 'fpr': [0.01, 0.05, 0.1]}
  results = {'config': {'num_defense_per_class': 100, 'rule': 'conformal', 'seed': 0,
                        'curve_alphas': [0.01, 0.05, 0.1]},
             'command': 'python -m eval.operating_points', 'models': {
                 'cifar10_badnets_resnet20': res,
                 report.TARGET_MODEL: res}}
  written = experiment.write_outputs(results, str(tmp_path))
  assert {p.rsplit('/', 1)[1] for p in written} == {'operating_points.json', 'tpr_vs_budget.png',
                                                    'operating_points.md'}
  md = (tmp_path / 'operating_points.md').read_text()
  assert 'python -m eval.operating_points' in md and '| 5% |' in md
  assert 'target (issue 18)' in md and 'at 5% FPR on v2/cifar10_badnets_resnet20' in md
  assert json.loads((tmp_path / 'operating_points.json').read_text())['models'].keys() == \
      results['models'].keys()


@pytest.mark.parametrize('args, message', [
    (['--alphas', '2'], 'false-positive budgets must lie in (0, 1); got 2.0'),
    (['--alphas', 'x'], "--alphas must be numbers; got ['x']"),
])
def test_detect_cli_operating_point_flags_fail_in_one_line(args, message):
  import subprocess
  import sys
  r = subprocess.run([sys.executable, '-m', 'eval.detect', *args, '--noprogress'], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and message in r.stderr and 'Traceback' not in r.stderr
