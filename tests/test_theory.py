"""Tests for the kernel-regression toy of SCALE-UP's Theorem 1 (scaleup_jax.theory)."""

import json
import os
import subprocess
import sys

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from scaleup_jax.theory import experiment, kernel, ntk, toy_data
from scaleup_jax.validation import InputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALES = list(range(1, 12))


def _numpy_nw(x, x_train, y_onehot, gamma):
  """Eq. 6 written out directly in float64 NumPy (no log-space tricks)."""
  x, x_train = np.asarray(x, np.float64), np.asarray(x_train, np.float64)
  d2 = ((x[:, None, :] - x_train[None, :, :]) ** 2).sum(-1)
  k = np.exp(-gamma * d2)
  return (k @ y_onehot) / k.sum(1, keepdims=True)


def _small_case(seed=0, n=30, m=8, d=3, k=4):
  rng = np.random.default_rng(seed)
  x_train = rng.uniform(size=(n, d)).astype(np.float32)
  y = np.eye(k)[rng.integers(0, k, n)]
  x = rng.uniform(size=(m, d)).astype(np.float32)
  return x, x_train, y


# ---------------------------------------------------------------------------
# (a) The regressor against a direct NumPy formula.


@pytest.mark.parametrize('gamma', [0.1, 1.0, 10.0])
def test_nadaraya_watson_matches_numpy(gamma):
  x, x_train, y = _small_case()
  # Also amplified queries (n = 3), the case SCALE-UP cares about.
  x = np.concatenate([x, 3.0 * x])
  got = np.asarray(kernel.nadaraya_watson(x, x_train, y, gamma))
  want = _numpy_nw(x, x_train, y, gamma)
  np.testing.assert_allclose(got, want, atol=2e-5)
  np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize('gamma', [0.1, 1.0, 10.0])
def test_rbf_kernel_and_distances_match_numpy(gamma):
  x, x_train, _ = _small_case(seed=1)
  d2 = ((x[:, None, :].astype(np.float64) - x_train[None]) ** 2).sum(-1)
  np.testing.assert_allclose(np.asarray(kernel.squared_distances(x, x_train)), d2, atol=1e-5)
  np.testing.assert_allclose(np.asarray(kernel.rbf_kernel(x, x_train, gamma)), np.exp(-gamma * d2),
                             rtol=1e-4, atol=1e-7)


def test_nadaraya_watson_is_stable_where_the_direct_formula_is_0_over_0():
  x, x_train, y = _small_case(seed=2)
  x = 11.0 * x  # amplified: gamma * d^2 is in the thousands
  gamma = 1e3
  with np.errstate(invalid='ignore'):
    direct = _numpy_nw(x, x_train, y, gamma)
  assert np.isnan(direct).any(), 'test premise: the direct formula should underflow to 0/0 here'
  got = np.asarray(kernel.nadaraya_watson(x, x_train, y, gamma))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
  # In the gamma -> inf limit Eq. 6 is the nearest-neighbour label.
  nearest = ((x[:, None, :].astype(np.float64) - x_train[None]) ** 2).sum(-1).argmin(1)
  np.testing.assert_array_equal(got.argmax(1), y[nearest].argmax(1))


def test_sweep_regressor_matches_nadaraya_watson():
  # The sweeps evaluate several gammas from one distance matrix; it must be Eq. 6 for each.
  x, x_train, y = _small_case(seed=3)
  x = np.concatenate([x, 5.0 * x])
  gammas = [0.1, 1.0, 10.0]
  got = np.asarray(experiment._nw_over_gammas(x, x_train, y.astype(np.float32), np.asarray(gammas, np.float32)))
  for i, g in enumerate(gammas):
    np.testing.assert_allclose(got[i], _numpy_nw(x, x_train, y, g), atol=2e-5)


@pytest.mark.parametrize('bad', [0.0, -1.0, float('nan'), float('inf')])
def test_bad_gamma_fails_loudly(bad):
  x, x_train, y = _small_case()
  with pytest.raises(InputError, match='gamma'):
    kernel.nadaraya_watson(x, x_train, y, bad)


@pytest.mark.parametrize('bad', [0.5, 0.0, -2.0])
def test_scale_below_one_fails_loudly(bad):
  with pytest.raises(InputError, match=f'n={bad}'):
    kernel.amplify(jnp.ones((2, 3)), bad, clip=True)
  with pytest.raises(InputError, match='n='):
    kernel.amplify_stack(jnp.ones((2, 3)), [1, 3, bad], clip=False)


@pytest.mark.parametrize('bad', [0.0, -0.1, 1.5, float('nan')])
def test_ratio_outside_unit_interval_fails_loudly(bad):
  with pytest.raises(InputError, match='ratio'):
    toy_data.make_problem(jax.random.key(0), dim=8, num_benign=20, num_test=10, ratio=bad)


def test_amplify_clips_only_when_asked():
  x = jnp.array([[0.2, 0.5, 0.0]])
  np.testing.assert_allclose(np.asarray(kernel.amplify(x, 3, clip=False)), [[0.6, 1.5, 0.0]], atol=1e-6)
  np.testing.assert_allclose(np.asarray(kernel.amplify(x, 3, clip=True)), [[0.6, 1.0, 0.0]], atol=1e-6)


def test_toy_problem_structure():
  p = toy_data.make_problem(jax.random.key(0), dim=16, num_benign=100, num_test=50, ratio=0.3,
                            trigger_size=4, trigger_pattern='white', target=2)
  assert p.num_benign == 100 and p.num_poison == 30
  assert np.all(np.bincount(p.y_train[~p.is_poison], minlength=10) == 10)  # balanced classes
  assert np.all(p.y_train[p.is_poison] == 2)
  np.testing.assert_array_equal(p.x_train[p.is_poison][:, -4:], 1.0)  # the white trigger
  assert np.all(p.y_test_poison_source != 2)
  assert 0.0 <= p.x_train.min() and p.x_train.max() <= 1.0
  # Common random numbers: a smaller ratio gives a nested training set.
  q = toy_data.make_problem(jax.random.key(0), dim=16, num_benign=100, num_test=50, ratio=0.1,
                            trigger_size=4, trigger_pattern='white', target=2)
  np.testing.assert_array_equal(q.x_train, p.x_train[:110])


# ---------------------------------------------------------------------------
# (b) The theorem's claims in the toy.


def _rbf_outputs(problem, gamma, clip):
  """phi and poisoned-mass share for benign + poisoned test inputs at every scale."""
  k = problem.num_classes
  x = np.concatenate([problem.x_test, problem.x_test_poison])
  q = kernel.amplify_stack(x, SCALES, clip).reshape(-1, x.shape[1])
  values = np.concatenate([np.eye(k)[problem.y_train], problem.is_poison[:, None]], 1)
  out = np.asarray(kernel.nadaraya_watson(q, problem.x_train, values, gamma)).reshape(len(SCALES), len(x), k + 1)
  return out[..., :k], out[..., k]


@pytest.mark.parametrize('clip', [False, True])
def test_theorem_phi_t_at_least_half_when_np_equals_nb(clip):
  # N_p = N_b, white trigger on 8 of 64 coordinates, gamma = 1. Why phi_t >= 1/2 here:
  # phi_t = W_p + (mass on benign target-class samples), and W_p >= 1/2 at every n:
  # * n = 1: the poisoned training samples match x' exactly on the 8 trigger
  #   coordinates, benign ones differ there by ~1/3 per coordinate in squared
  #   distance, so they hold most of the kernel mass (the backdoor is learned);
  # * n > 1, no clip: ranking by -||n x' - x_i||^2 is ranking by
  #   2n <x', x_i> - ||x_i||^2; a white (all-ones) trigger maximises the
  #   trigger part of <x', x_i>, so the poisoned samples gain ~n * 8 * 1/2 over
  #   benign ones and W_p -> 1;
  # * n > 1, clip: clip(n x') tends to the all-ones vector, whose nearest
  #   training points are the poisoned ones (their trigger coordinates are
  #   already 1).
  p = toy_data.make_problem(jax.random.key(0), dim=64, num_benign=400, num_test=80, ratio=1.0,
                            trigger_size=8, trigger_pattern='white')
  phi, mass = _rbf_outputs(p, gamma=1.0, clip=clip)
  mb = len(p.x_test)
  phi_t = phi[:, mb:, p.target]
  assert phi_t.min() >= 0.5, f'min phi_t per scale: {phi_t.min(1).round(3).tolist()}'
  assert np.all(phi[:, mb:].argmax(-1) == p.target)
  assert mass[:, mb:].mean(1).min() >= 0.5
  # ... and the model is a usable classifier, not "y_t everywhere".
  assert np.mean(phi[0, :mb].argmax(-1) == p.y_test) >= 0.9


@pytest.mark.parametrize('clip', [False, True])
def test_benign_label_preservation_falls_with_scale(clip):
  # Random black-and-white BadNets-style trigger, N_p/N_b = 0.5.
  p = toy_data.make_problem(jax.random.key(0), dim=64, num_benign=400, num_test=200, ratio=0.5,
                            trigger_size=8, trigger_pattern='random')
  phi, _ = _rbf_outputs(p, gamma=1.0, clip=clip)
  mb = len(p.x_test)
  pred = phi[:, :mb].argmax(-1)
  preserved = np.mean(pred == pred[0], axis=1)  # fraction with C(n x) = C(x), per n
  # Non-increasing in n (up to sampling noise of a few inputs) and clearly falling.
  assert np.all(np.diff(preserved) <= 0.03), preserved.round(3).tolist()
  assert preserved[-1] <= preserved[1] - 0.1, preserved.round(3).tolist()
  assert preserved[-1] <= 0.9, preserved.round(3).tolist()
  # Poisoned inputs keep their (target) label: SPC separates them.
  metrics = experiment.scale_metrics(phi, mb, p.y_test, p.target, SCALES)
  assert metrics['spc_poison'] > metrics['spc_benign'] + 0.1, metrics


def test_documented_failure_black_trigger_without_clipping():
  # docs/theory.md reports this failure: with a black (t = 0) trigger and no
  # clipping, the trigger adds nothing to <n x', x_i>, so at large n the
  # kernel mass is spread by brightness, not by the trigger, and
  # C(n x') = y_t stops holding although N_p = N_b. Clipping restores it.
  p = toy_data.make_problem(jax.random.key(0), dim=64, num_benign=1000, num_test=80, ratio=1.0,
                            trigger_size=8, trigger_pattern='black')
  mb = len(p.x_test)
  phi, mass = _rbf_outputs(p, gamma=1.0, clip=False)
  asr = np.mean(phi[:, mb:].argmax(-1) == p.target, axis=1)
  assert asr[0] >= 0.95 and asr[-1] <= 0.7, asr.round(3).tolist()
  poison_mass = mass[:, mb:].mean(1)  # W_p falls towards the head-count share 1/2
  assert poison_mass[-1] <= 0.7 and poison_mass[-1] <= poison_mass[0] - 0.2, poison_mass.round(3).tolist()
  phi, _ = _rbf_outputs(p, gamma=1.0, clip=True)
  assert np.all(phi[:, mb:].argmax(-1) == p.target)


def test_scale_metrics_on_a_hand_made_case():
  # 2 benign inputs, 2 poisoned inputs, K = 3, target 0, scales 1..11.
  s, k = len(SCALES), 3
  phi = np.zeros((s, 4, k))
  phi[:, 0, 1] = 1.0                  # benign 0: class 1 at every scale (SPC 1)
  phi[:, 1, 2] = 1.0                  # benign 1: class 2 at n = 1 ...
  phi[2:, 1, 2], phi[2:, 1, 0] = 0.0, 1.0  # ... class 0 from n = 3 on (SPC 0)
  phi[:, 2, 0] = 1.0                  # poisoned 0: target everywhere
  phi[:, 3, 0] = 0.6                  # poisoned 1: target, phi_t = 0.6 ...
  phi[:, 3, 1] = 0.4
  phi[10, 3, 0], phi[10, 3, 1] = 0.3, 0.7  # ... except at n = 11
  m = experiment.scale_metrics(phi, 2, np.array([1, 1]), 0, SCALES)
  assert m['clean_acc'] == 0.5
  assert m['asr_n1'] == 1.0 and m['theorem_frac'] == 0.5 and m['first_failing_scale'] == 11
  assert m['spc_benign'] == 0.5 and m['spc_poison'] == pytest.approx(0.9)
  assert m['spc_auroc'] == pytest.approx(0.625)  # pairs: (1 vs 1) 1/2, (1 vs 0) 1, (.8 vs 1) 0, (.8 vs 0) 1
  assert m['preserved_benign_by_scale'] == [1.0, 1.0] + [0.5] * 9
  assert m['phi_half_frac'] == 0.5


def test_auroc():
  assert experiment.auroc([1, 1], [0, 0]) == 1.0
  assert experiment.auroc([0.5], [0.5]) == 0.5
  assert experiment.auroc([0, 0], [1, 1]) == 0.0


# ---------------------------------------------------------------------------
# Empirical NTK.


def _mlp_case():
  apply_fn, params = ntk.init_mlp(jax.random.key(0), 5, (8, 8))
  rng = np.random.default_rng(0)
  return apply_fn, params, rng.uniform(size=(12, 5)).astype(np.float32), rng.uniform(size=(4, 5)).astype(np.float32)


def test_empirical_ntk_matches_per_sample_gradients():
  apply_fn, params, x_train, x = _mlp_case()

  def grad_vec(xi):
    g = jax.grad(lambda p: apply_fn(p, xi[None])[0])(params)
    return np.asarray(jax.flatten_util.ravel_pytree(g)[0], np.float64)

  g_train = np.stack([grad_vec(xi) for xi in x_train])
  g_x = np.stack([grad_vec(xi) for xi in x])
  np.testing.assert_allclose(np.asarray(ntk.empirical_ntk(apply_fn, params, x, x_train)),
                             g_x @ g_train.T, rtol=1e-4, atol=1e-5)
  # Chunked evaluation with a padded last chunk gives the same Jacobian.
  np.testing.assert_allclose(np.asarray(ntk.flat_jacobian(apply_fn, params, x_train, chunk=5)),
                             g_train, rtol=1e-5, atol=1e-6)


def test_ntk_regression_and_nw_match_explicit_formulas():
  apply_fn, params, x_train, x = _mlp_case()
  y = np.eye(3)[np.arange(12) % 3]
  gram = np.asarray(ntk.empirical_ntk(apply_fn, params, x_train), np.float64)
  cross = np.asarray(ntk.empirical_ntk(apply_fn, params, x, x_train), np.float64)
  ridge = 1e-2
  alpha = np.linalg.solve(gram + ridge * np.trace(gram) / 12 * np.eye(12), y)
  reg = ntk.fit_ntk_regression(apply_fn, params, x_train, y, ridge=ridge)
  np.testing.assert_allclose(np.asarray(reg(x)), cross @ alpha, rtol=2e-3, atol=2e-4)
  phi, denom = ntk.ntk_nadaraya_watson(apply_fn, params, x_train, y)(x)
  np.testing.assert_allclose(np.asarray(denom), cross.sum(1), rtol=1e-4)
  np.testing.assert_allclose(np.asarray(phi), (cross @ y) / cross.sum(1, keepdims=True), rtol=1e-4, atol=1e-5)
  with pytest.raises(InputError, match='ridge=-1'):
    ntk.fit_ntk_regression(apply_fn, params, x_train, y, ridge=-1.0)


# ---------------------------------------------------------------------------
# (c) The entry point.


def test_config_validation_names_the_bad_value():
  with pytest.raises(InputError, match='gamma=-1'):
    experiment.TheoryConfig(gammas=(-1.0, 1.0)).validate()
  with pytest.raises(InputError, match='ratio=2'):
    experiment.TheoryConfig(ratios=(2.0, 1.0)).validate()
  with pytest.raises(InputError, match='missing'):
    experiment.TheoryConfig(scales=(1, 2, 3)).validate()


def test_eval_theory_quick_writes_json_and_figures(tmp_path):
  out = tmp_path / 'theory'
  proc = subprocess.run([sys.executable, '-m', 'eval.theory', '--quick', '--no-progress', '--out', str(out)],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((out / 'theory.json').read_text())
  for key in ('config', 'seed', 'scales', 'spc_scales', 'definitions', 'rbf', 'ntk', 'summary', 'figures',
              'runtime_s'):
    assert key in results, key
  assert results['quick'] is True and results['spc_scales'] == [3, 5, 7, 9, 11]
  cfg = results['config']
  grid = results['rbf']['grid']
  assert len(grid) == len(cfg['trigger_patterns']) * len(cfg['ratios']) * len(cfg['gammas']) * 2
  row = grid[0]
  for key in ('clean_acc', 'theorem_frac', 'spc_benign', 'spc_poison', 'spc_auroc', 'asr_by_scale',
              'phi_t_poison_mean_by_scale', 'preserved_benign_by_scale', 'poison_mass_by_scale'):
    assert key in row, key
  assert len(row['asr_by_scale']) == len(results['scales']) == 11
  assert {r['regressor'] for r in results['ntk']['runs']} == {'krr', 'nw'}
  assert results['figures']
  for name in results['figures']:
    data = (out / name).read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 10_000, name


def test_eval_theory_rejects_bad_arguments():
  proc = subprocess.run([sys.executable, '-m', 'eval.theory', '--seed', 'abc'], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and '--seed' in proc.stderr
