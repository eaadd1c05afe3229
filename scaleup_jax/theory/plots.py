"""Figures for :func:`scaleup_jax.theory.experiment.run_theory`.

Uses matplotlib's object-oriented API (``matplotlib.figure.Figure``, rendered
by the Agg canvas on ``savefig``), so it never touches pyplot's global backend
and works the same in scripts, tests and notebooks.

References:
  Guo et al., "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection
  via Analyzing Scaled Prediction Consistency", ICLR 2023.
  https://arxiv.org/abs/2302.03251
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.figure import Figure

_CLIP_STYLE = {False: '-', True: '--'}
_CLIP_NAME = {False: 'no clip', True: 'clip'}
_PATTERN_COLOR = {'white': 'tab:orange', 'random': 'tab:purple', 'black': 'k'}


def _pick(rows, **kw):
  out = [r for r in rows if all(r[k] == v for k, v in kw.items())]
  if not out:
    raise KeyError(f'no result row matches {kw}')
  return out[0]


def _save(fig: Figure, out_dir: str, name: str) -> str:
  path = os.path.join(out_dir, name)
  fig.savefig(path, dpi=110, bbox_inches='tight')
  return path


def scale_curves(results: dict[str, Any]) -> Figure:
  """phi_t, label preservation and poisoned kernel mass vs scale n (RBF, default setting)."""
  cfg = results['config']
  grid = results['rbf']['grid']
  patterns = cfg['trigger_patterns']
  scales = results['scales']
  fig = Figure(layout='constrained', figsize=(13, 3.2 * len(patterns)))
  axes = fig.subplots(len(patterns), 3, squeeze=False)
  for row, pattern in enumerate(patterns):
    for clip in (False, True):
      r = _pick(grid, pattern=pattern, clip=clip, gamma=cfg['gamma'], ratio=cfg['ratio'])
      ls = _CLIP_STYLE[clip]
      ax = axes[row, 0]
      ax.plot(scales, r['phi_t_poison_mean_by_scale'], 'r' + ls, label=f'poisoned mean ({_CLIP_NAME[clip]})')
      ax.plot(scales, r['phi_t_poison_min_by_scale'], 'r' + ls, alpha=0.4, lw=1,
              label=f'poisoned min ({_CLIP_NAME[clip]})')
      ax.plot(scales, r['phi_t_benign_mean_by_scale'], 'b' + ls, label=f'benign mean ({_CLIP_NAME[clip]})')
      ax = axes[row, 1]
      ax.plot(scales, r['preserved_poison_by_scale'], 'r' + ls, label=f'poisoned ({_CLIP_NAME[clip]})')
      ax.plot(scales, r['preserved_benign_by_scale'], 'b' + ls, label=f'benign ({_CLIP_NAME[clip]})')
      ax = axes[row, 2]
      ax.plot(scales, r['poison_mass_by_scale'], 'r' + ls, label=f'poisoned inputs ({_CLIP_NAME[clip]})')
      ax.plot(scales, r['poison_mass_benign_by_scale'], 'b' + ls, label=f'benign inputs ({_CLIP_NAME[clip]})')
    axes[row, 0].axhline(0.5, color='gray', lw=0.8)
    axes[row, 2].axhline(0.5, color='gray', lw=0.8)
    axes[row, 0].set_ylabel(f'{pattern} trigger')
    for ax in axes[row]:
      ax.set_ylim(-0.03, 1.03)
      ax.set_xlabel('scale n')
  axes[0, 0].set_title(r'$\phi_t(n\,x)$ (target-class kernel mass)')
  axes[0, 1].set_title(r'fraction with $C(n\,x) = C(x)$')
  axes[0, 2].set_title(r'kernel mass on poisoned training samples $W_p$')
  for ax in axes[0]:
    ax.legend(fontsize=7)
  fig.suptitle(f"RBF kernel regression, N_p/N_b={cfg['ratio']}, gamma={cfg['gamma']}, "
               f"trigger size {cfg['trigger_size']}/{cfg['dim']}")
  return fig


def phase_diagram(results: dict[str, Any]) -> Figure:
  """theorem_frac over (gamma x ratio) per trigger pattern and clip mode; 'D' marks degenerate cells."""
  cfg = results['config']
  grid = results['rbf']['grid']
  patterns, ratios, gammas = cfg['trigger_patterns'], cfg['ratios'], cfg['gammas']
  fig = Figure(layout='constrained', figsize=(11, 3.6 * len(patterns)))
  axes = fig.subplots(len(patterns), 2, squeeze=False)
  im = None
  for row, pattern in enumerate(patterns):
    for col, clip in enumerate((False, True)):
      ax = axes[row, col]
      mat = np.zeros((len(gammas), len(ratios)))
      for i, g in enumerate(gammas):
        for j, r in enumerate(ratios):
          cell = _pick(grid, pattern=pattern, clip=clip, gamma=g, ratio=r)
          mat[i, j] = cell['theorem_frac']
          text = 'D' if cell['degenerate'] else f"{cell['theorem_frac']:.2f}"
          ax.text(j, i, text, ha='center', va='center', fontsize=7,
                  color='white' if mat[i, j] < 0.5 else 'black')
      im = ax.imshow(mat, origin='lower', vmin=0, vmax=1, cmap='viridis', aspect='auto')
      ax.set_xticks(range(len(ratios)), [str(r) for r in ratios], fontsize=7)
      ax.set_yticks(range(len(gammas)), [str(g) for g in gammas], fontsize=7)
      ax.set_xlabel('N_p / N_b')
      ax.set_ylabel('gamma')
      ax.set_title(f'{pattern} trigger, {_CLIP_NAME[clip]}', fontsize=9)
  fig.colorbar(im, ax=axes, shrink=0.5, label="fraction of poisoned x' with C(n x') = y_t for all n in 1..11")
  fig.suptitle("Where Theorem 1's conclusion holds (RBF); D = degenerate (clean accuracy < 0.5)")
  return fig


def spc_vs_ratio(results: dict[str, Any]) -> Figure:
  """Mean SPC (poisoned, benign) and its AUROC vs poisoning ratio, default gamma."""
  cfg = results['config']
  grid = results['rbf']['grid']
  fig = Figure(layout='constrained', figsize=(11, 6.5))
  axes = fig.subplots(2, 2, squeeze=False)
  for col, clip in enumerate((False, True)):
    for pattern in cfg['trigger_patterns']:
      rows = [_pick(grid, pattern=pattern, clip=clip, gamma=cfg['gamma'], ratio=r) for r in cfg['ratios']]
      c = _PATTERN_COLOR.get(pattern)
      axes[0, col].plot(cfg['ratios'], [r['spc_poison'] for r in rows], '-o', color=c, ms=3,
                        label=f'{pattern}: poisoned')
      axes[0, col].plot(cfg['ratios'], [r['spc_benign'] for r in rows], ':o', color=c, ms=3,
                        label=f'{pattern}: benign')
      axes[1, col].plot(cfg['ratios'], [r['spc_auroc'] for r in rows], '-o', color=c, ms=3, label=pattern)
    axes[0, col].set_title(f'mean SPC, {_CLIP_NAME[clip]}')
    axes[1, col].set_title(f'SPC AUROC (poisoned vs benign), {_CLIP_NAME[clip]}')
    for ax in axes[:, col]:
      ax.set_xscale('log')
      ax.set_xlabel('N_p / N_b')
      ax.set_ylim(-0.03, 1.03)
  axes[0, 0].legend(fontsize=7)
  axes[1, 0].legend(fontsize=7)
  fig.suptitle(f"RBF, gamma={cfg['gamma']}, trigger size {cfg['trigger_size']}")
  return fig


def trigger_size(results: dict[str, Any]) -> Figure:
  """theorem_frac and SPC AUROC vs trigger size."""
  cfg = results['config']
  runs = results['rbf']['trigger_size']
  ratios = cfg['size_sweep_ratios']
  fig = Figure(layout='constrained', figsize=(5.5 * len(ratios), 6.5))
  axes = fig.subplots(2, len(ratios), squeeze=False)
  for col, ratio in enumerate(ratios):
    for pattern in cfg['trigger_patterns']:
      for clip in (False, True):
        rows = [_pick(runs, pattern=pattern, clip=clip, ratio=ratio, trigger_size=s) for s in cfg['trigger_sizes']]
        kw = dict(color=_PATTERN_COLOR.get(pattern), ls=_CLIP_STYLE[clip], marker='o', ms=3,
                  label=f'{pattern}, {_CLIP_NAME[clip]}')
        for row, key in enumerate(('theorem_frac', 'spc_auroc')):
          axes[row, col].plot(cfg['trigger_sizes'], [r[key] for r in rows], **kw)
          bad = [(s, r[key]) for s, r in zip(cfg['trigger_sizes'], rows) if r['degenerate']]
          if bad:
            axes[row, col].scatter(*zip(*bad), marker='x', s=60, color=kw['color'], zorder=3)
    axes[0, col].set_title(f"fraction with C(n x') = y_t for all n, N_p/N_b={ratio}", fontsize=9)
    axes[1, col].set_title(f'SPC AUROC, N_p/N_b={ratio}', fontsize=9)
    for ax in axes[:, col]:
      ax.set_xscale('log', base=2)
      ax.set_xlabel(f"trigger size (of {cfg['dim']} coordinates)")
      ax.set_ylim(-0.03, 1.03)
  axes[0, 0].legend(fontsize=7)
  fig.suptitle(f"RBF, gamma={cfg['gamma']}; x = degenerate (clean accuracy < 0.5)")
  return fig


def ntk_vs_rbf(results: dict[str, Any]) -> Figure:
  """Attack success and benign label preservation vs n: RBF-NW, NTK-NW, NTK ridge regression."""
  cfg = results['config']
  scales = results['scales']
  ratio = max(cfg['ntk_ratios'])
  patterns = cfg['trigger_patterns']
  fig = Figure(layout='constrained', figsize=(4.3 * len(patterns), 6.5))
  axes = fig.subplots(2, len(patterns), squeeze=False)
  for col, pattern in enumerate(patterns):
    for clip in (False, True):
      ls = _CLIP_STYLE[clip]
      series = [('RBF-NW', 'tab:blue', _pick(results['rbf']['grid'], pattern=pattern, clip=clip,
                                                 gamma=cfg['gamma'], ratio=ratio))]
      for reg, color in (('nw', 'tab:green'), ('krr', 'tab:red')):
        series.append((f'NTK-{reg.upper()}', color,
                       _pick(results['ntk']['runs'], pattern=pattern, clip=clip, regressor=reg, ratio=ratio)))
      for name, color, r in series:
        label = f"{name}, {_CLIP_NAME[clip]}" + (' (degenerate)' if r['degenerate'] else '')
        axes[0, col].plot(scales, r['asr_by_scale'], ls, color=color, label=label)
        axes[1, col].plot(scales, r['preserved_benign_by_scale'], ls, color=color, label=label)
    axes[0, col].set_title(f"{pattern}: fraction C(n x') = y_t", fontsize=9)
    axes[1, col].set_title(f'{pattern}: benign C(n x) = C(x)', fontsize=9)
    for ax in axes[:, col]:
      ax.set_ylim(-0.03, 1.03)
      ax.set_xlabel('scale n')
  for ax in axes[0]:
    ax.legend(fontsize=6)
  fig.suptitle(f"Does the RBF picture carry over to the empirical NTK? N_p/N_b={ratio} "
               f"(RBF N_b={cfg['num_benign']}, NTK N_b={cfg['ntk_num_benign']})")
  return fig


FIGURES = {
    'scale_curves.png': scale_curves,
    'phase_diagram.png': phase_diagram,
    'spc_vs_ratio.png': spc_vs_ratio,
    'trigger_size.png': trigger_size,
    'ntk_vs_rbf.png': ntk_vs_rbf,
}


def write_figures(results: dict[str, Any], out_dir: str) -> list[str]:
  """Writes every figure in :data:`FIGURES` to ``out_dir``; returns the file names."""
  names = []
  for name, make in FIGURES.items():
    _save(make(results), out_dir, name)
    names.append(name)
  return names
