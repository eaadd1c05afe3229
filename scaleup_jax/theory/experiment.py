"""Sweeps that test SCALE-UP's Theorem 1 in the kernel-regression toy.

Theorem 1 (Guo et al., 2023): if the network is RBF kernel regression (Eq. 6)
trained on N_b benign samples with labels uniform over K classes and N_p
poisoned samples ``x' = (1 - m) * x + m * t`` labelled ``y_t``, then
``lim_{N_p -> N_b} C(n * x') = y_t`` for every ``n >= 1``.

:func:`run_theory` measures, for poisoned and benign test inputs and every
scale ``n`` in ``config.scales`` (1..11):

* ``phi_t(n x)``: the kernel mass on the target class;
* whether ``C(n x') = y_t`` (the theorem's claim), and the fraction of
  poisoned inputs for which it holds at *every* tested n (``theorem_frac``);
* whether ``C(n x) = C(x)`` (label preserved), and SPC, the fraction of the
  SCALE-UP scales {3, 5, 7, 9, 11} that preserve the label, with the AUROC of
  SPC as a poisoned-vs-benign detector;
* for Nadaraya-Watson regressors, ``W_p(n x)``: the share of kernel mass on the
  poisoned training samples. ``phi_t = W_p + (mass on benign target-class
  samples)``, so at ``N_p = N_b`` the conclusion ``phi_t >= 1/2`` follows as
  soon as ``W_p >= 1/2``, i.e. as soon as the poisoned samples get at least
  their head-count share of the kernel mass.

over the poisoning ratio ``N_p / N_b``, the RBF width gamma, the trigger size
and pattern, with and without clipping ``n * x`` to [0, 1] (the theorem
ignores clipping, the detector clips). The same sweep, smaller, runs with the
empirical NTK of a small Flax MLP (see :mod:`scaleup_jax.theory.ntk`), both in
the Nadaraya-Watson form and as kernel ridge regression.

References:
  Guo et al., "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection
  via Analyzing Scaled Prediction Consistency", ICLR 2023.
  https://arxiv.org/abs/2302.03251
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from scaleup_jax import metrics
from scaleup_jax.theory import kernel as kernel_lib
from scaleup_jax.theory import ntk as ntk_lib
from scaleup_jax.theory import toy_data
from scaleup_jax.validation import InputError

SPC_SCALES = (3, 5, 7, 9, 11)

DEFINITIONS = {
    'clean_acc': 'fraction of benign test inputs with C(x) = y (n = 1)',
    'asr_by_scale': 'per scale n: fraction of poisoned test inputs with C(n x\') = y_t',
    'theorem_frac': 'fraction of poisoned test inputs with C(n x\') = y_t for every tested n',
    'consistent_given_attack': 'among poisoned inputs with C(x\') = y_t, the fraction with '
                               'C(n x\') = y_t for every tested n (None if no attack succeeds)',
    'first_failing_scale': 'smallest tested n with asr_by_scale[n] < holds_threshold (None if none)',
    'holds': 'theorem_frac >= config.holds_threshold',
    'degenerate': 'clean_acc < 0.5: the regressor predicts (mostly) y_t everywhere, so a '
                  'holding theorem says nothing about a usable model',
    'phi_t_poison_mean_by_scale': 'per n: mean over poisoned inputs of phi_t(n x\')',
    'phi_t_poison_min_by_scale': 'per n: min over poisoned inputs of phi_t(n x\')',
    'phi_t_benign_mean_by_scale': 'per n: mean over benign inputs of phi_t(n x)',
    'phi_half_frac': 'fraction of poisoned inputs with phi_t(n x\') >= 0.5 for every tested n',
    'preserved_benign_by_scale': 'per n: fraction of benign inputs with C(n x) = C(x)',
    'preserved_poison_by_scale': 'per n: fraction of poisoned inputs with C(n x\') = C(x\')',
    'spc_benign / spc_poison': 'mean SPC: fraction of n in {3,5,7,9,11} with C(n x) = C(x)',
    'spc_auroc': 'AUROC of SPC for poisoned (positive) vs benign inputs, ties count 1/2',
    'poison_mass_by_scale': 'Nadaraya-Watson only, per n: mean over poisoned inputs of the '
                            'share of kernel mass on poisoned training samples',
}


@dataclasses.dataclass(frozen=True)
class TheoryConfig:
  """Settings of the toy and its sweeps (see ``docs/theory.md``).

  Attributes:
    dim: input dimension D (inputs in [0, 1]^D).
    num_classes: K.
    num_benign: N_b for the RBF sweeps.
    num_test: benign test inputs (the poisoned ones are those not of class
      ``target``, triggered).
    class_sep: class separation ``s`` of :func:`toy_data.sample_benign`.
    target: y_t.
    gamma: default RBF width.
    ratio: default N_p / N_b (the theorem's limit is 1).
    trigger_size: default number of trigger coordinates.
    scales: amplification scales n; must contain 1 and :data:`SPC_SCALES`.
    ratios, gammas: the (ratio x gamma) grid, run for every trigger pattern.
    trigger_sizes, trigger_patterns: the trigger sweep, at ratios
      ``size_sweep_ratios`` and the default gamma.
    holds_threshold: ``theorem_frac`` needed to call the conclusion "holding".
    ntk_*: the NTK sweep (smaller): N_b, hidden widths, bias init std, ridge,
      ratios and patterns.
  """

  dim: int = 64
  num_classes: int = 10
  num_benign: int = 1000
  num_test: int = 200
  class_sep: float = 0.5
  target: int = 0
  gamma: float = 1.0
  ratio: float = 1.0
  trigger_size: int = 8
  scales: tuple[int, ...] = tuple(range(1, 12))
  ratios: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
  gammas: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
  trigger_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
  trigger_patterns: tuple[str, ...] = ('white', 'random', 'black')
  size_sweep_ratios: tuple[float, ...] = (0.1, 1.0)
  holds_threshold: float = 0.95
  ntk_num_benign: int = 400
  ntk_features: tuple[int, ...] = (64, 64)
  ntk_bias_init_std: float = 0.1
  ntk_ridge: float = 1e-3
  ntk_ratios: tuple[float, ...] = (0.01, 0.1, 1.0)

  def validate(self) -> None:
    """Raises InputError naming the first bad setting."""
    for g in (self.gamma, *self.gammas):
      kernel_lib.check_gamma(g)
    for r in (self.ratio, *self.ratios, *self.size_sweep_ratios, *self.ntk_ratios):
      toy_data.check_ratio(r)
    for n in self.scales:
      kernel_lib.check_scale(n)
    missing = sorted(set((1,) + SPC_SCALES) - set(self.scales))
    if missing:
      raise InputError(f'scales {self.scales} must include 1 and the SPC scales {SPC_SCALES}; missing {missing}')
    for p in self.trigger_patterns:
      if p not in toy_data.PATTERNS:
        raise InputError(f'unknown trigger pattern {p!r}; expected one of {toy_data.PATTERNS}')
    for s in (self.trigger_size, *self.trigger_sizes):
      if not 1 <= s <= self.dim:
        raise InputError(f'trigger size {s} must be in [1, dim={self.dim}]')
    if self.gamma not in self.gammas:
      raise InputError(f'default gamma {self.gamma} must be one of the swept gammas {self.gammas}')
    if self.ratio not in self.ratios:
      raise InputError(f'default ratio {self.ratio} must be one of the swept ratios {self.ratios}')
    if not 0 < self.holds_threshold <= 1:
      raise InputError(f'holds_threshold must be in (0, 1]; got {self.holds_threshold}')


def quick_config() -> TheoryConfig:
  """A tiny setting for tests and the notebook (seconds, mostly compilation)."""
  # gamma = 4 at D = 16 plays the role of gamma = 1 at D = 64 (squared
  # distances scale with D); it keeps the quick classifier non-degenerate.
  return TheoryConfig(
      dim=16, num_benign=100, num_test=40, trigger_size=4, gamma=4.0,
      ratios=(0.1, 1.0), gammas=(1.0, 4.0), trigger_sizes=(4,),
      trigger_patterns=('white', 'black'), size_sweep_ratios=(1.0,),
      ntk_num_benign=60, ntk_features=(16, 16), ntk_ratios=(1.0,),
  )


# ----------------------------------------------------------------------------
# Metrics.


def auroc(pos, neg) -> float:
  """Area under the ROC curve of scores ``pos`` (positives) vs ``neg``.

  Args:
    pos: ``(P,)`` scores of positives.
    neg: ``(Q,)`` scores of negatives.

  Returns:
    ``P(pos > neg) + P(pos == neg) / 2`` over all pairs.
  """
  return metrics.auroc(neg, pos)


def scale_metrics(phi, num_benign_inputs: int, y_benign, target: int, scales,
                  mass=None, holds_threshold: float = 0.95) -> dict[str, Any]:
  """Theorem and SPC metrics from the regressor outputs at every scale.

  Args:
    phi: ``(S, M, K)`` regressor outputs for S scales and M inputs, the first
      ``num_benign_inputs`` benign, the rest poisoned.
    num_benign_inputs: M_b.
    y_benign: ``(M_b,)`` true labels of the benign inputs.
    target: y_t.
    scales: the S scales (must contain 1 and :data:`SPC_SCALES`).
    mass: optional ``(S, M)`` share of kernel mass on poisoned training samples.
    holds_threshold: see :class:`TheoryConfig`.

  Returns:
    A dict of floats and per-scale lists; keys are described in
    :data:`DEFINITIONS`.
  """
  phi = np.asarray(phi, np.float64)
  scales = [float(s) for s in scales]
  if phi.ndim != 3 or phi.shape[0] != len(scales):
    raise InputError(f'phi must be (S={len(scales)}, M, K); got {phi.shape}')
  mb = num_benign_inputs
  i1 = scales.index(1.0)
  spc_idx = [scales.index(float(s)) for s in SPC_SCALES]
  pred = phi.argmax(-1)
  pb, pp = pred[:, :mb], pred[:, mb:]
  phib, phip = phi[:, :mb, target], phi[:, mb:, target]
  spc_b = np.mean(pb[spc_idx] == pb[i1], axis=0)
  spc_p = np.mean(pp[spc_idx] == pp[i1], axis=0)
  theorem_frac = float(np.mean(np.all(pp == target, axis=0)))
  clean_acc = float(np.mean(pb[i1] == np.asarray(y_benign)))
  asr = np.mean(pp == target, axis=1)
  attacked = pp[i1] == target
  failing = [scales[i] for i in range(len(scales)) if asr[i] < holds_threshold]
  out = {
      'clean_acc': clean_acc,
      'asr_n1': float(np.mean(attacked)),
      'theorem_frac': theorem_frac,
      'consistent_given_attack': (float(np.mean(np.all(pp[:, attacked] == target, axis=0)))
                                  if attacked.any() else None),
      'first_failing_scale': failing[0] if failing else None,
      'holds': bool(theorem_frac >= holds_threshold),
      'degenerate': bool(clean_acc < 0.5),
      'phi_half_frac': float(np.mean(np.all(phip >= 0.5, axis=0))),
      'spc_benign': float(spc_b.mean()),
      'spc_poison': float(spc_p.mean()),
      'spc_auroc': auroc(spc_p, spc_b),
      'asr_by_scale': asr.tolist(),
      'phi_t_poison_mean_by_scale': phip.mean(1).tolist(),
      'phi_t_poison_min_by_scale': phip.min(1).tolist(),
      'phi_t_benign_mean_by_scale': phib.mean(1).tolist(),
      'preserved_benign_by_scale': np.mean(pb == pb[i1], axis=1).tolist(),
      'preserved_poison_by_scale': np.mean(pp == pp[i1], axis=1).tolist(),
  }
  if mass is not None:
    mass = np.asarray(mass, np.float64)
    out['poison_mass_by_scale'] = mass[:, mb:].mean(1).tolist()
    out['poison_mass_benign_by_scale'] = mass[:, :mb].mean(1).tolist()
  return out


def _round(obj, digits: int = 3):
  if isinstance(obj, float):
    return round(obj, digits)
  if isinstance(obj, dict):
    return {k: _round(v, digits) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_round(v, digits) for v in obj]
  return obj


def _to_json(results) -> str:
  """Indented JSON with lists of numbers kept on one line (a third smaller)."""
  def collapse(match):
    inner = match.group(1)
    if re.fullmatch(r'(?:[-+0-9.eE]+|null|true|false|,|\s)*', inner):  # numbers, null, booleans
      return '[' + ' '.join(inner.split()) + ']'
    return match.group(0)
  return re.sub(r'\[\s+([^\[\]{}"]*?)\s+\]', collapse, json.dumps(results, indent=1))


# ----------------------------------------------------------------------------
# RBF Nadaraya-Watson.


@jax.jit
def _nw_over_gammas(x, x_train, values, gammas):
  """``(Q, D), (N, D), (N, V), (G,) -> (G, Q, V)``; distances computed once."""
  neg_d2 = -kernel_lib.squared_distances(x, x_train)
  return jax.lax.map(lambda g: jax.nn.softmax(g * neg_d2, axis=-1) @ values, gammas)


def _amplified_queries(problem: toy_data.ToyProblem, scales, clips: Sequence[bool]):
  """``(C * S * M, D)`` queries: clip mode, then scale, then benign + poisoned input."""
  x = np.concatenate([problem.x_test, problem.x_test_poison])
  stacks = [kernel_lib.amplify_stack(x, scales, clip) for clip in clips]
  return jnp.stack(stacks).reshape(-1, x.shape[1]), x.shape[0]


def rbf_sweep_point(problem: toy_data.ToyProblem, gammas, scales, clips=(False, True),
                    holds_threshold: float = 0.95) -> dict[tuple[float, bool], dict]:
  """Runs RBF Nadaraya-Watson on one problem for several gammas and clip modes.

  Args:
    problem: a :class:`toy_data.ToyProblem`.
    gammas: RBF widths, each > 0.
    scales: amplification scales (contain 1 and :data:`SPC_SCALES`).
    clips: clip modes to run.
    holds_threshold: see :class:`TheoryConfig`.

  Returns:
    ``{(gamma, clip): scale_metrics(...)}``.
  """
  for g in gammas:
    kernel_lib.check_gamma(g)
  k = problem.num_classes
  values = np.concatenate([np.eye(k, dtype=np.float32)[problem.y_train],
                           problem.is_poison[:, None].astype(np.float32)], axis=1)
  queries, m = _amplified_queries(problem, scales, clips)
  out = np.asarray(_nw_over_gammas(queries, jnp.asarray(problem.x_train), jnp.asarray(values),
                                   jnp.asarray(gammas, jnp.float32)))
  out = out.reshape(len(gammas), len(clips), len(scales), m, k + 1)
  results = {}
  for gi, g in enumerate(gammas):
    for ci, clip in enumerate(clips):
      o = out[gi, ci]
      results[(float(g), bool(clip))] = scale_metrics(
          o[..., :k], len(problem.x_test), problem.y_test, problem.target, scales,
          mass=o[..., k], holds_threshold=holds_threshold)
  return results


# ----------------------------------------------------------------------------
# Empirical NTK.


def ntk_sweep_point(apply_fn, params, problem: toy_data.ToyProblem, jacobian, gram, scales,
                    ridge: float, clips=(False, True), holds_threshold: float = 0.95):
  """NTK ridge regression and NTK Nadaraya-Watson on one problem.

  Args:
    apply_fn, params: the scalar-output MLP.
    problem: a :class:`toy_data.ToyProblem`.
    jacobian: ``(N, P)`` Jacobian of ``problem.x_train``.
    gram: ``(N, N)`` its Gram matrix.
    scales: amplification scales.
    ridge: relative ridge of :func:`ntk_lib.ridge_dual_coefficients`.
    clips: clip modes.
    holds_threshold: see :class:`TheoryConfig`.

  Returns:
    ``({(regressor, clip): metrics}, min_denominator)`` with regressor in
    ``{'krr', 'nw'}``; ``min_denominator`` is the smallest NW normaliser
    ``sum_i Theta(n x, x_i)`` seen (it must be > 0 for Eq. 6 to make sense).
  """
  k = problem.num_classes
  y = np.eye(k, dtype=np.float32)[problem.y_train]
  alpha = ntk_lib.ridge_dual_coefficients(gram, y, ridge)
  ones = np.ones((len(y), 1), np.float32)
  coeffs = jnp.concatenate([alpha, jnp.asarray(y), jnp.asarray(problem.is_poison[:, None], jnp.float32),
                            jnp.asarray(ones)], axis=1)
  reg = ntk_lib.ntk_linear_predictor(apply_fn, params, jacobian, coeffs)
  queries, m = _amplified_queries(problem, scales, clips)
  out = np.asarray(reg(queries), np.float64).reshape(len(clips), len(scales), m, 2 * k + 2)
  denom = out[..., -1]
  results = {}
  for ci, clip in enumerate(clips):
    o = out[ci]
    results[('krr', bool(clip))] = scale_metrics(
        o[..., :k], len(problem.x_test), problem.y_test, problem.target, scales,
        holds_threshold=holds_threshold)
    d = denom[ci][..., None]
    results[('nw', bool(clip))] = scale_metrics(
        o[..., k:2 * k] / d, len(problem.x_test), problem.y_test, problem.target, scales,
        mass=o[..., 2 * k] / denom[ci], holds_threshold=holds_threshold)
  return results, float(denom.min())


# ----------------------------------------------------------------------------
# The whole study.


def _draws(key, config: TheoryConfig, num_benign: int) -> toy_data.BenignDraws:
  return toy_data.draw_benign(key, dim=config.dim, num_classes=config.num_classes, num_benign=num_benign,
                              num_test=config.num_test, class_sep=config.class_sep)


def _problem(draws, config: TheoryConfig, *, ratio, pattern, size=None):
  return toy_data.poison(draws, ratio=ratio, trigger_pattern=pattern, target=config.target,
                         trigger_size=config.trigger_size if size is None else size)


def _summarise(rbf_grid, ntk_runs, config: TheoryConfig) -> dict[str, Any]:
  """Where the conclusion holds and fails, per trigger pattern and clip mode."""
  summary = {'rbf': [], 'ntk': []}
  for pattern in config.trigger_patterns:
    for clip in (False, True):
      cells = [r for r in rbf_grid if r['pattern'] == pattern and r['clip'] == clip]
      useful = [r for r in cells if not r['degenerate']]
      holding = [r for r in useful if r['holds']]
      at_gamma = sorted((r for r in holding if r['gamma'] == config.gamma), key=lambda r: r['ratio'])
      worst = min(useful, key=lambda r: r['theorem_frac']) if useful else None
      default = next((r for r in cells if r['gamma'] == config.gamma and r['ratio'] == config.ratio), None)
      summary['rbf'].append({
          'pattern': pattern, 'clip': clip,
          'cells': len(cells), 'nondegenerate_cells': len(useful), 'holding_nondegenerate_cells': len(holding),
          'degenerate_cells': len(cells) - len(useful),
          'min_ratio_holding_at_default_gamma': at_gamma[0]['ratio'] if at_gamma else None,
          'worst_nondegenerate': None if worst is None else {
              k: worst[k] for k in ('ratio', 'gamma', 'theorem_frac', 'clean_acc', 'asr_n1')},
          'worst_nondegenerate_min_asr': None if worst is None else min(worst['asr_by_scale']),
          'default': None if default is None else {
              k: default[k] for k in ('ratio', 'gamma', 'clean_acc', 'asr_n1', 'theorem_frac',
                                      'consistent_given_attack', 'first_failing_scale', 'phi_half_frac',
                                      'spc_benign', 'spc_poison', 'spc_auroc')},
          'default_asr_n11': None if default is None else default['asr_by_scale'][-1],
          'default_poison_mass_n11': None if default is None else default['poison_mass_by_scale'][-1],
      })
  for r in ntk_runs:
    if r['ratio'] == max(config.ntk_ratios):
      summary['ntk'].append({k: r[k] for k in (
          'pattern', 'clip', 'regressor', 'ratio', 'clean_acc', 'degenerate', 'theorem_frac',
          'first_failing_scale', 'spc_benign', 'spc_poison', 'spc_auroc')} | {'asr_n11': r['asr_by_scale'][-1],
                                           'preserved_benign_n11': r['preserved_benign_by_scale'][-1]})
  return summary


def run_theory(out_dir: str | None = None, seed: int = 0, quick: bool = False,
               config: TheoryConfig | None = None, progress: bool = True,
               figures: bool = True) -> dict[str, Any]:
  """Runs every sweep; writes ``theory.json``, ``summary.md`` and figures; returns the results.

  Args:
    out_dir: output directory (created); None writes nothing.
    seed: all randomness (data, triggers, MLP init) derives from
      ``jax.random.key(seed)``.
    quick: use :func:`quick_config` (ignored when ``config`` is given).
    config: explicit :class:`TheoryConfig`.
    progress: show a tqdm bar over the sweep points.
    figures: also write PNG figures (needs matplotlib).

  Returns:
    The dict written to ``theory.json``: ``config``, ``definitions``,
    ``rbf`` (``grid`` over pattern x ratio x gamma x clip and ``trigger_size``
    over pattern x size x ratio x clip), ``ntk`` (``runs`` over pattern x
    ratio x regressor x clip), ``summary`` and ``runtime_s``.

  Example:
    >>> results = run_theory(None, seed=0, quick=True, progress=False)
    >>> sorted(results)[:3]
    ['config', 'definitions', 'figures']

  References:
    Guo et al., ICLR 2023, Theorem 1. https://arxiv.org/abs/2302.03251
  """
  start = time.perf_counter()
  if config is None:
    config = quick_config() if quick else TheoryConfig()
  config.validate()
  key = jax.random.key(seed)
  data_key, ntk_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  scales = list(config.scales)

  grid_jobs = [(p, r) for p in config.trigger_patterns for r in config.ratios]
  size_jobs = [(p, s, r) for p in config.trigger_patterns for s in config.trigger_sizes
               for r in config.size_sweep_ratios]
  ntk_jobs = [(p, r) for p in config.trigger_patterns for r in config.ntk_ratios]
  bar = tqdm(total=len(grid_jobs) + len(size_jobs) + len(ntk_jobs), desc='theory sweeps',
             disable=not progress, leave=False)

  draws = _draws(data_key, config, config.num_benign)
  grid = []
  for pattern, ratio in grid_jobs:
    bar.set_postfix_str(f'rbf grid {pattern} r={ratio}')
    problem = _problem(draws, config, ratio=ratio, pattern=pattern)
    for (g, clip), m in rbf_sweep_point(problem, config.gammas, scales,
                                        holds_threshold=config.holds_threshold).items():
      grid.append({'pattern': pattern, 'ratio': ratio, 'gamma': g, 'trigger_size': config.trigger_size,
                   'clip': clip, 'num_poison': problem.num_poison} | m)
    bar.update()

  size_runs = []
  for pattern, size, ratio in size_jobs:
    bar.set_postfix_str(f'rbf size {pattern} s={size} r={ratio}')
    problem = _problem(draws, config, ratio=ratio, pattern=pattern, size=size)
    for (g, clip), m in rbf_sweep_point(problem, (config.gamma,), scales,
                                        holds_threshold=config.holds_threshold).items():
      size_runs.append({'pattern': pattern, 'ratio': ratio, 'gamma': g, 'trigger_size': size,
                        'clip': clip} | m)
    bar.update()

  apply_fn, params = ntk_lib.init_mlp(ntk_key, config.dim, config.ntk_features, config.ntk_bias_init_std)
  num_params = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
  ntk_runs, min_denom, kernel_min = [], np.inf, np.inf
  jac_benign = None
  ntk_draws = _draws(data_key, config, config.ntk_num_benign)
  for pattern in config.trigger_patterns:
    # One Jacobian and Gram for the largest training set; smaller ratios use
    # nested subsets (benign rows + the first N_p poisoned rows).
    full = _problem(ntk_draws, config, ratio=max(config.ntk_ratios), pattern=pattern)
    nb = full.num_benign
    if jac_benign is None:
      jac_benign = ntk_lib.flat_jacobian(apply_fn, params, full.x_train[:nb])
    jac = jnp.concatenate([jac_benign, ntk_lib.flat_jacobian(apply_fn, params, full.x_train[nb:])])
    gram = np.asarray(jac @ jac.T)
    kernel_min = min(kernel_min, float(gram.min()))
    for ratio in config.ntk_ratios:
      bar.set_postfix_str(f'ntk {pattern} r={ratio}')
      problem = _problem(ntk_draws, config, ratio=ratio, pattern=pattern)
      rows = np.arange(len(problem.x_train))
      if not np.array_equal(problem.x_train, full.x_train[rows]):
        raise AssertionError('NTK training sets are not nested; the Jacobian reuse would be wrong')
      res, dmin = ntk_sweep_point(apply_fn, params, problem, jac[rows], gram[np.ix_(rows, rows)],
                                  scales, config.ntk_ridge, holds_threshold=config.holds_threshold)
      min_denom = min(min_denom, dmin)
      for (regressor, clip), m in res.items():
        ntk_runs.append({'pattern': pattern, 'ratio': ratio, 'regressor': regressor, 'clip': clip,
                         'trigger_size': config.trigger_size, 'num_poison': problem.num_poison} | m)
      bar.update()
  bar.close()

  results = {
      'config': dataclasses.asdict(config),
      'seed': seed,
      'quick': quick,
      'scales': scales,
      'spc_scales': list(SPC_SCALES),
      'definitions': DEFINITIONS,
      'rbf': {'grid': grid, 'trigger_size': size_runs},
      'ntk': {'runs': ntk_runs, 'num_params': num_params,
              'min_train_gram_entry': kernel_min, 'min_nw_denominator': min_denom,
              'regressors': {'krr': 'Theta(x,X) (Theta(X,X) + ridge*mean(diag) I)^-1 Y',
                             'nw': 'Eq. 6 with Theta in place of K (valid while the denominator > 0)'}},
      'summary': _summarise(grid, ntk_runs, config),
  }
  results = _round(results)
  results['figures'] = []
  if out_dir is not None:
    os.makedirs(out_dir, exist_ok=True)
    if figures:
      from scaleup_jax.theory import plots  # matplotlib only when figures are wanted.
      results['figures'] = plots.write_figures(results, out_dir)
    results['runtime_s'] = round(time.perf_counter() - start, 2)
    with open(os.path.join(out_dir, 'theory.json'), 'w') as f:
      f.write(_to_json(results))
    from scaleup_jax.theory import report
    with open(os.path.join(out_dir, 'summary.md'), 'w') as f:
      f.write(report.markdown_tables(results))
  else:
    results['runtime_s'] = round(time.perf_counter() - start, 2)
  return results
