"""Calibrated thresholds: the finite-sample FPR guarantee, ties, intervals, save/load.

The property test draws many synthetic *discrete* benign score distributions
(few distinct values, heavy ties, as SPC), calibrates on ``n`` of their draws
and measures the false-positive rate of the calibrated randomised detector on
fresh benign draws.
"""

import json
import math

import jax
import numpy as np
import pytest
from scipy.stats import binomtest

from scaleup_jax import calibration, integrity, scaleup
from scaleup_jax.calibration import CalibrationMismatchError, calibrate_threshold
from scaleup_jax.validation import InputError


# ---------------------------------------------------------------- the rule by hand


def test_conformal_rule_by_hand():
  # n = 10, alpha = 0.3: budget alpha (n + 1) = 3.3 -> k = 3; the 3rd largest is 1.0,
  # held by 5 scores (G = 0 above it): tie_prob = 3.3 / (1 + 5).
  s = np.array([0., 0., .2, .2, .4, 1., 1., 1., 1., 1.])
  t = calibrate_threshold(s, 0.3)
  assert (t.threshold, t.num_above, t.num_tied, t.feasible) == (1.0, 0, 5, True)
  assert t.tie_prob == pytest.approx(3.3 / 6)
  # Plug-in: exactly alpha on the calibration scores.
  p = calibrate_threshold(s, 0.3, 'plugin')
  assert (p.threshold, p.tie_prob) == (1.0, pytest.approx(0.6))
  assert p.calibration_rate == pytest.approx(0.3)


def test_conformal_rule_continuous_scores_is_the_order_statistic():
  s = np.arange(199, dtype=np.float32)  # all distinct: the k-th largest, no coin at the fresh score
  t = calibrate_threshold(s, 0.05)  # k = floor(0.05 * 200) = 10
  assert t.threshold == 189.0 and t.num_above == 9 and t.num_tied == 1


@pytest.mark.parametrize('alpha, n_min', [(0.01, 99), (0.05, 19), (0.1, 9), (0.3, 3)])
def test_min_calibration_size_is_the_feasibility_edge(alpha, n_min):
  assert calibration.min_calibration_size(alpha) == n_min
  assert calibrate_threshold(np.zeros(n_min), alpha).feasible
  assert not calibrate_threshold(np.zeros(n_min - 1), alpha).feasible


def test_infeasible_budget_flags_nothing_and_says_why():
  t = calibrate_threshold(np.ones(50), 0.01)
  assert not t.feasible and t.threshold == math.inf
  assert calibration.flag_probability(np.array([0.0, 1.0, 5.0]), t).tolist() == [0, 0, 0]
  op = calibration.operating_point(jax.random.key(0), t, np.ones(100), np.ones(100))
  assert op['fpr']['rate'] == 0 and op['tpr']['rate'] == 0
  assert 'cannot certify' in op['reading'] and 'needs at least 99' in op['reading']
  assert op['threshold'] == 'inf'  # JSON-safe
  json.dumps(op)


def test_flag_probability_and_seeded_coins():
  t = calibrate_threshold(np.array([0., 0., 1., 1.]), 0.25, 'plugin')  # 1.0 w.p. 1/2
  assert calibration.flag_probability(np.array([2., 1., 0.]), t).tolist() == [1.0, 0.5, 0.0]
  scores = np.ones(2000)
  a = calibration.flag(jax.random.key(1), scores, t)
  assert np.array_equal(a, calibration.flag(jax.random.key(1), scores, t))
  assert not np.array_equal(a, calibration.flag(jax.random.key(2), scores, t))
  assert abs(a.mean() - 0.5) < 0.05
  # Only ties are randomised.
  assert calibration.flag(jax.random.key(1), np.array([3., -1.]), t).tolist() == [True, False]


def test_agrees_with_the_smoothed_conformal_p_value():
  """flag_probability(s) <= P_U(p(s) <= alpha) everywhere, with equality at or above t."""
  rng = np.random.default_rng(3)
  for trial in range(200):
    n = int(rng.integers(5, 60))
    alpha = float(rng.uniform(0.02, 0.5))
    s = rng.integers(0, 5, n).astype(np.float32) / 4
    t = calibrate_threshold(s, alpha)
    for v in np.arange(-1, 6) / 4:
      g, e = np.sum(s > v), np.sum(s == v)
      p_conf = float(np.clip((alpha * (n + 1) - g) / (1 + e), 0, 1))
      mine = float(calibration.flag_probability(np.array([v]), t)[0])
      assert mine <= p_conf + 1e-9, (trial, v)
      if t.feasible and v >= t.threshold:
        assert mine == pytest.approx(p_conf), (trial, v)


@pytest.mark.parametrize('bad, message', [
    (dict(scores=np.ones(5), alpha=1.5), 'alpha must lie in'),
    (dict(scores=np.ones(5), alpha=-0.1), 'alpha must lie in'),
    (dict(scores=np.zeros(0), alpha=0.1), 'at least one benign'),
    (dict(scores=np.array([0.1, np.nan]), alpha=0.1), 'non-finite value nan at index 1'),
    (dict(scores=np.ones((2, 2)), alpha=0.1), 'shape (2, 2)'),
    (dict(scores=np.ones(5), alpha=0.1, rule='bonferroni'), "unknown calibration rule 'bonferroni'"),
])
def test_bad_input_names_the_value(bad, message):
  with pytest.raises(InputError, match=message.replace('(', r'\(').replace(')', r'\)')):
    calibrate_threshold(bad['scores'], bad['alpha'], bad.get('rule', 'conformal'))


def test_clopper_pearson_matches_scipy():
  for k, n in [(0, 100), (3, 100), (100, 100), (47, 9000), (1, 2)]:
    ci = binomtest(k, n).proportion_ci(0.95, method='exact')
    assert calibration.clopper_pearson(k, n) == pytest.approx((ci.low, ci.high))
  with pytest.raises(InputError, match='5 of 3'):
    calibration.clopper_pearson(5, 3)


# ---------------------------------------------------------------- the property test


def _discrete_benign(rng, num_values):
  """A random discrete score distribution: values 0, 1/(V-1), ..., 1 with Dirichlet mass.

  The top value gets extra mass (as SPC = 1 does on the zoo models), so the
  boundary of a small budget usually falls inside a tie.
  """
  probs = rng.dirichlet(np.ones(num_values))
  top = rng.uniform(0.0, 0.25)
  probs = (1 - top) * probs
  probs[-1] += top
  return np.linspace(0, 1, num_values), probs / probs.sum()


def _exact_fpr(values, probs, thr):
  return float(np.sum(probs * calibration.flag_probability(values, thr)))


# (alpha, n): includes n = 50 with alpha = 1% (infeasible: flags nothing) and n = 120
# with alpha = 1% (k = 1: the guarantee forces the largest calibration score).
CELLS = [(0.01, 50), (0.01, 120), (0.01, 1000), (0.05, 50), (0.05, 200), (0.05, 1000),
         (0.1, 50), (0.1, 200), (0.1, 1000)]


@pytest.mark.parametrize('alpha, n', CELLS)
def test_property_realised_fpr_within_budget(alpha, n):
  """Over many random discrete distributions and calibration draws, the realised FPR on
  fresh benign draws is at most alpha plus its sampling error (3 standard errors), and
  (for the conformal rule) at least alpha - 1/(n + 1) minus it."""
  draws, fresh = 300, 2000
  rng = np.random.default_rng([2023, int(alpha * 1000), n])  # synthetic data
  coins = np.asarray(jax.random.uniform(jax.random.key(n), (draws, fresh)), np.float64)
  exact, realised, feasible = [], [], []
  for r in range(draws):
    num_values = int(rng.integers(2, 7))  # 2..6 distinct scores
    values, probs = _discrete_benign(rng, num_values)
    thr = calibrate_threshold(rng.choice(values, n, p=probs), alpha)
    new = rng.choice(values, fresh, p=probs)
    # The calibrated randomised decision (calibration.flag with these coins).
    realised.append(np.mean(coins[r] < calibration.flag_probability(new, thr)))
    exact.append(_exact_fpr(values, probs, thr))
    feasible.append(thr.feasible)
  exact, realised = np.asarray(exact), np.asarray(realised)
  if n < calibration.min_calibration_size(alpha):
    assert not any(feasible) and realised.max() == 0 and exact.max() == 0
    return
  assert all(feasible)
  se_exact = exact.std(ddof=1) / np.sqrt(draws)
  se_real = realised.std(ddof=1) / np.sqrt(draws)
  assert exact.mean() <= alpha + 3 * se_exact, (exact.mean(), se_exact)
  assert realised.mean() <= alpha + 3 * se_real, (realised.mean(), se_real)
  assert exact.mean() >= alpha - 1 / (n + 1) - 3 * se_exact, (exact.mean(), se_exact)


@pytest.mark.parametrize('alpha, n', [(0.01, 120), (0.05, 50), (0.1, 1000)])
def test_property_continuous_scores_get_the_conservative_order_statistic(alpha, n):
  """No ties: the fresh score never meets the coin, and E[FPR] = floor(alpha (n+1)) / (n+1),
  strictly below alpha when alpha (n + 1) is not an integer (n = 120, alpha = 1%: 1/121)."""
  draws = 2000
  rng = np.random.default_rng([7, n])
  fprs = []
  for _ in range(draws):
    thr = calibrate_threshold(rng.uniform(size=n), alpha)  # benign scores ~ U(0, 1)
    fprs.append(1.0 - thr.threshold)  # P(U > t); P(U = t) = 0
  fprs = np.asarray(fprs)
  want = math.floor(alpha * (n + 1) + 1e-9) / (n + 1)
  se = fprs.std(ddof=1) / np.sqrt(draws)
  assert abs(fprs.mean() - want) <= 3 * se, (fprs.mean(), want, se)
  assert fprs.mean() <= alpha + 3 * se


def test_property_deterministic_threshold_would_break_the_budget_or_waste_it():
  """Why the coin: on SPC-like ties the best deterministic rule misses 5% by far."""
  values = np.linspace(0, 1, 6)
  probs = np.array([0.3, 0.25, 0.15, 0.1, 0.1, 0.1])  # 10% of benign at the top value
  key = jax.random.key(7)
  cal = values[np.asarray(jax.random.choice(key, 6, (1000,), p=probs))]
  thr = calibrate_threshold(cal, 0.05)
  assert thr.threshold == 1.0 and 0.3 < thr.tie_prob < 0.7
  assert abs(_exact_fpr(values, probs, thr) - 0.05) < 0.02
  det = scaleup.threshold_for_fpr(cal, 0.05)  # "score > T": nothing above the top value
  assert np.sum(probs[values > det]) == 0


# ---------------------------------------------------------------- the saved detector


def _variables(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {'params': {'w': jax.random.normal(k1, (3, 4)), 'b': jax.random.normal(k2, (4,))}}


def _label_rows(key, n, num_scales=5):
  return np.asarray(jax.random.randint(key, (n, 1 + num_scales), 0, 3))


def test_detector_round_trip(tmp_path):
  v = _variables()
  cal = _label_rows(jax.random.key(0), 400)
  det = calibration.calibrate_detector('spc', cal, scaleup.DEFAULT_SCALES, 0.05, v,
                                       meta={'note': 'test'})
  path = det.save(tmp_path / 'det.json')
  back = calibration.load_detector(path, variables=v, scales=scaleup.DEFAULT_SCALES, score='spc')
  assert back == det
  assert back.threshold.alpha == 0.05 and back.forwards_per_image == 6
  test = _label_rows(jax.random.key(1), 300)
  key = jax.random.key(5)
  assert np.array_equal(back.flag_labels(key, test), det.flag_labels(key, test))


def test_detector_round_trip_with_fitted_class_statistics(tmp_path):
  v = _variables()
  fit_rows, cal_rows = _label_rows(jax.random.key(0), 300), _label_rows(jax.random.key(1), 300)
  params = scaleup.fit_label_score('data_limited', fit_rows, scaleup.DEFAULT_SCALES, 3)
  det = calibration.calibrate_detector('data_limited', cal_rows, scaleup.DEFAULT_SCALES, 0.1, v,
                                       score_params=params)
  back = calibration.load_detector(det.save(tmp_path / 'dl.json'), variables=v)
  test = _label_rows(jax.random.key(2), 100)
  assert np.array_equal(back.scores_from_labels(test), det.scores_from_labels(test))
  assert back.score_params['class_stats']['mean'] == params['class_stats']['mean']


def test_detector_mismatch_errors(tmp_path):
  v = _variables(0)
  det = calibration.calibrate_detector('survival', _label_rows(jax.random.key(0), 200),
                                       scaleup.DEFAULT_SCALES, 0.1, v)
  path = det.save(tmp_path / 'det.json')
  with pytest.raises(CalibrationMismatchError, match='calibrated on model'):
    calibration.load_detector(path, variables=_variables(1))
  other = jax.tree.map(lambda a: a, v)
  other['params']['b'] = other['params']['b'].at[0].add(1e-3)  # one weight changed
  with pytest.raises(CalibrationMismatchError, match='recalibrate'):
    calibration.load_detector(path, variables=other)
  with pytest.raises(CalibrationMismatchError, match=r'calibrated for scales \[3.0, 5.0'):
    calibration.load_detector(path, scales=(3, 5, 7, 9))
  with pytest.raises(CalibrationMismatchError, match="holds score 'survival', not 'spc'"):
    calibration.load_detector(path, score='spc')
  with pytest.raises(CalibrationMismatchError, match=r'reads 1 \+ 5 columns'):
    det.flag_labels(jax.random.key(0), np.zeros((4, 8), np.int64))


def test_detector_file_errors(tmp_path):
  with pytest.raises(integrity.IntegrityError, match='missing'):
    calibration.load_detector(tmp_path / 'absent.json')
  det = calibration.calibrate_detector('spc', _label_rows(jax.random.key(0), 200),
                                       scaleup.DEFAULT_SCALES, 0.05, _variables())
  edited = det.save(tmp_path / 'edited.json')
  doc = json.loads(edited.read_text())
  doc['payload']['threshold']['tie_prob'] = 0.99  # a hand-edited threshold
  edited.write_text(json.dumps(doc))
  with pytest.raises(integrity.IntegrityError, match='edited or corrupt'):
    calibration.load_detector(edited)
  bad = tmp_path / 'bad.json'
  bad.write_text('{"kind": "scaleup_calibrated_detector", "payl')
  with pytest.raises(integrity.IntegrityError):
    calibration.load_detector(bad)
  foreign = tmp_path / 'foreign.json'
  integrity.atomic_write_json(foreign, {'kind': 'something else', 'payload': {}})
  with pytest.raises(integrity.IntegrityError):
    calibration.load_detector(foreign)


def test_model_fingerprint_is_content_and_path_sensitive():
  v = _variables(0)
  assert calibration.model_fingerprint(v) == calibration.model_fingerprint(jax.tree.map(np.asarray, v))
  swapped = {'params': {'w': v['params']['w'], 'c': v['params']['b']}}
  assert calibration.model_fingerprint(swapped) != calibration.model_fingerprint(v)


# ---------------------------------------------------------------- readings


def test_readings_explain_every_zero():
  thr = calibrate_threshold(np.r_[np.zeros(900), np.ones(100)], 0.05)
  # Poisoned all below the threshold: TPR 0 with its reason.
  op = calibration.operating_point(jax.random.key(0), thr, np.zeros(500), np.zeros(200))
  assert op['tpr']['rate'] == 0 and 'FPR and TPR are 0' in op['reading']
  op = calibration.operating_point(jax.random.key(0), thr, np.r_[np.zeros(500), np.ones(50)],
                                   np.zeros(200))
  assert 'every positive scores below' in op['reading']
  # A working point has no reading.
  op = calibration.operating_point(jax.random.key(0), thr, np.r_[np.zeros(900), np.ones(100)],
                                   np.ones(200) * 2)
  assert op['reading'] is None and op['tpr']['rate'] == 1.0
  assert op['alpha_in_fpr_interval'] and op['within_sampling_error']
