"""Figures for :func:`scaleup_jax.operating_points.experiment.run_operating_points`.

Object-oriented matplotlib (``Figure``, Agg on ``savefig``), as in
:mod:`scaleup_jax.theory.plots`.
"""

from __future__ import annotations

import math
import os
from typing import Any

from matplotlib.figure import Figure


def tpr_vs_budget(results: dict[str, Any]) -> Figure:
  """TPR against the FPR budget alpha for every score, one panel per model.

  Lines: the coin-averaged TPR of the threshold calibrated at each budget of
  ``config.curve_alphas``; markers with bars: the realised TPR and its 95%
  Clopper-Pearson interval at the table's budgets. The paper's modes are solid,
  the other scores dashed; the dotted diagonal is a detector that flags at
  random (TPR = FPR).
  """
  models = list(results['models'])
  cols = min(3, len(models))
  rows = math.ceil(len(models) / cols)
  fig = Figure(layout='constrained', figsize=(5.2 * cols, 4.0 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.flat[len(models):]:
    ax.set_visible(False)
  for ax, name in zip(axes.flat, models):
    rec = results['models'][name]
    for i, (score, entry) in enumerate(rec['operating_points'].items()):
      color = f'C{i % 10}'
      curve = entry.get('curve')
      style = '-' if entry['paper'] else '--'
      label = ('* ' if entry['paper'] else '') + entry['label']
      if curve:
        ax.plot(curve['alpha'], curve['tpr'], style, color=color, lw=2.0 if entry['paper'] else 1.2,
                label=label)
      for a_key, op in entry['alphas'].items():
        lo, hi = op['tpr']['interval']
        r = op['tpr']['rate']
        ax.errorbar([float(a_key)], [r], yerr=[[r - lo], [hi - r]], fmt='o', ms=3.5, color=color,
                    capsize=2, lw=0.8, label=None if curve else label)
    lim = results['config'].get('curve_alphas') or [0.01, 0.1]
    xs = [min(lim), max(lim)]
    ax.plot(xs, xs, ':', color='gray', lw=0.8)
    ax.set_xscale('log')
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel('false-positive budget alpha (calibrated threshold)')
    ax.set_ylabel('true-positive rate')
    ax.set_title(f"{name} (target {rec['target_label']}, {rec['num_benign']} benign, "
                 f"{rec['num_positives']} poisoned)", fontsize=9)
    ax.grid(alpha=0.3, which='both')
  axes.flat[0].legend(fontsize=7, loc='upper left')
  cal = next(iter(results['models'].values())).get('calibration') or {}
  fig.suptitle(f"SCALE-UP label-only scores at calibrated operating points ({cal.get('rule')} rule, "
               f"{cal.get('num_calibration')} calibration images; * = the paper's modes)")
  return fig


def write_figures(results: dict[str, Any], out_dir: str) -> list[str]:
  """Writes ``tpr_vs_budget.png`` to ``out_dir``; returns its path."""
  path = os.path.join(out_dir, 'tpr_vs_budget.png')
  tpr_vs_budget(results).savefig(path, dpi=110, bbox_inches='tight')
  return [path]
