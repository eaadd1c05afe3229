"""Figures of a failure map (:func:`scaleup_jax.failure_map.experiment.run`).

Object-oriented matplotlib (``Figure``, Agg on ``savefig``), as in
:mod:`scaleup_jax.operating_points.plots`.

* :func:`heatmaps`: pattern x target, one panel per metric of
  :data:`~scaleup_jax.failure_map.experiment.METRICS`; cells without a model
  are hatched, cells whose target is the model's sink class are outlined.
* :func:`mechanism_plot`: per model, mean SPC of successful poisoned images
  against benign images of the target class and the other benign images; the
  share of x11 images that land in the target class; AUROC against the SPC gap.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from scaleup_jax.failure_map import experiment


def _class_label(results: dict, k: int) -> str:
  names = next(iter(results['models'].values())).get('class_names') or []
  return f'{k}: {names[k]}' if k < len(names) else str(k)


def heatmaps(results: dict[str, Any]) -> Figure:
  """A 2x2 figure of AUROC (data-free, data-limited) and calibrated TPR at 5% FPR."""
  g = experiment.map_grid(results)
  rows, cols = g['rows'], g['cols']
  h = 0.45 * len(rows) + 1.3
  w = max(1.0 * len(cols) + 2.4, 5.5)
  fig = Figure(layout='constrained', figsize=(2 * w, 2 * h))
  axes = fig.subplots(2, 2, squeeze=False)
  im = None
  for ax, metric in zip(axes.flat, experiment.METRICS):
    m = experiment.metric_matrix(results, metric)
    im = ax.imshow(np.ma.masked_invalid(m), cmap='RdYlGn', vmin=0.0, vmax=1.0, aspect='auto')
    for i, row in enumerate(rows):
      for j, col in enumerate(cols):
        name = g['cells'].get((row, col))
        if name is None or np.isnan(m[i, j]):
          ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch='///',
                                 edgecolor='0.75', lw=0))
          ax.text(j, i, '-' if name is None else 'n/a', ha='center', va='center', fontsize=8,
                  color='0.5')
          continue
        ax.text(j, i, f'{m[i, j]:.2f}', ha='center', va='center', fontsize=9,
                color='black' if 0.2 < m[i, j] < 0.85 else 'white', fontweight='bold')
        if results['models'][name].get('target_is_sink'):
          ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, lw=2.0,
                                 edgecolor='black'))
    ax.set_xticks(range(len(cols)), [_class_label(results, k) for k in cols], fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel('target class')
    ax.set_title(experiment.METRICS[metric][0], fontsize=10)
  fig.colorbar(im, ax=axes, shrink=0.6, label='AUROC / TPR')
  cfg = results['config']
  fig.suptitle(f"SCALE-UP failure map ({cfg['num_images']} evaluation images per model, "
               f"{cfg['num_defense_per_class']} defender images per class)\noutlined: target = the "
               "model's sink class; hatched: no model", fontsize=10)
  return fig


def _short(name: str) -> str:
  return name.split('/')[-1] if name.startswith('zoo/failure_map/') else name.replace('zoo/', '')


def mechanism_plot(results: dict[str, Any]) -> Figure:
  """Mean SPC by group, share of x11 images in the target class, AUROC against the SPC gap."""
  models = list(results['models'])
  recs = [results['models'][m] for m in models]
  labels = [f"{_short(m)} ({r['variant']}, t{r['target']})" for m, r in zip(models, recs)]
  y = np.arange(len(models))
  f = recs[0]['mechanism']['goes_to']['benign']['factors']
  big, small = f'x{f[-1]:g}', f'x{f[1]:g}'
  fig = Figure(layout='constrained', figsize=(17, 0.42 * len(models) + 2.4))
  ax1, ax2, ax3 = fig.subplots(1, 3, gridspec_kw={'width_ratios': [1.3, 1.0, 1.0]})
  spc = lambda r, g: (r['mechanism']['spc'][g]['mean'] if r['mechanism']['spc'][g]['mean']
                      is not None else np.nan)
  groups = [('poisoned_successful', 'poisoned (successful)', 'C3'),
            ('benign_target_true', 'benign, true class = target', 'C0'),
            ('benign_other', 'benign, other classes', 'C7')]
  bh = 0.26
  for k, (g, lab, c) in enumerate(groups):
    ax1.barh(y + (k - 1) * bh, [spc(r, g) for r in recs], bh, color=c, label=lab)
  ax1.set_yticks(y, labels, fontsize=7)
  ax1.invert_yaxis()
  ax1.set_xlim(0, 1)
  ax1.set_xlabel(f'mean SPC (fraction of {small}..{big} keeping the label)')
  ax1.legend(fontsize=7, loc='lower left', bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
  ax1.grid(alpha=0.3, axis='x')

  last = lambda r, g: (r['mechanism']['goes_to'][g]['to_target'][-1]
                       if r['mechanism']['goes_to'][g]['to_target'] else np.nan)
  sink = lambda r: (r['mechanism']['goes_to']['benign']['to_sinks'][-1] if r.get('sinks') else 0.0)
  for k, (vals, lab, c) in enumerate([
      ([last(r, 'poisoned_successful') for r in recs], f'poisoned {big} -> target', 'C3'),
      ([last(r, 'benign') for r in recs], f'benign {big} -> target', 'C7'),
      ([sink(r) for r in recs], f"benign {big} -> the model's sink class(es)", 'C8')]):
    ax2.barh(y + (k - 1) * bh, vals, bh, color=c, label=lab)
  ax2.set_yticks(y, [''] * len(y))
  ax2.invert_yaxis()
  ax2.set_xlim(0, 1)
  ax2.set_xlabel(f'share of images amplified {big}')
  ax2.legend(fontsize=7, loc='lower left', bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
  ax2.grid(alpha=0.3, axis='x')

  gap = [spc(r, 'poisoned_successful') - spc(r, 'benign_all') for r in recs]
  for i, (r, gx) in enumerate(zip(recs, gap)):
    a = (r.get('auroc') or {}).get('data-free')
    if a is None or np.isnan(gx):
      continue
    ax3.scatter([gx], [a], color='C3' if r.get('target_is_sink') else 'C0', s=28, zorder=3)
    ax3.annotate(_short(models[i]), (gx, a), fontsize=6, xytext=(3, 2), textcoords='offset points')
  ax3.axhline(0.5, ls=':', color='gray', lw=0.8)
  ax3.axvline(0.0, ls=':', color='gray', lw=0.8)
  ax3.set_ylim(0, 1.02)
  ax3.set_xlim(-1.02, 1.02)
  ax3.set_xlabel('mean SPC: poisoned (successful) - all benign')
  ax3.set_ylabel('AUROC, data-free')
  ax3.set_title('red: target = sink class', fontsize=8)
  ax3.grid(alpha=0.3)
  fig.suptitle(f'Why SCALE-UP fails: SPC of poisoned vs benign images, and where {big} images go',
               fontsize=10)
  return fig


def write_figures(results: dict[str, Any], out_dir: str) -> list[str]:
  """``heatmap.png`` and ``mechanism.png`` in ``out_dir``; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  out = []
  for name, fig in (('heatmap.png', heatmaps(results)), ('mechanism.png', mechanism_plot(results))):
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=130)
    out.append(path)
  return out
