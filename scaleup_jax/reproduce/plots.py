"""Figures of :mod:`scaleup_jax.reproduce`, drawn from each experiment's :class:`~.experiments.Outcome`.

One function per experiment, ``f(record, extras) -> Figure``: ``record`` is the
experiment's entry of ``reproduce.json`` and ``extras`` the arrays beside it
(:mod:`.experiments`). Nothing here touches a model or a file except
:func:`save`. Uses matplotlib's object-oriented API (``matplotlib.figure.Figure``,
rendered by the Agg canvas on ``savefig``), as :mod:`scaleup_jax.theory.plots`
does, so it never switches pyplot's global backend.

Example:
  >>> from scaleup_jax.reproduce import experiments, plots
  >>> outcome = experiments.ablation_scales(ctx)            # doctest: +SKIP
  >>> plots.save(plots.ablation_scales(outcome.record, outcome.extras),
  ...            out / 'ablation_scales.png', command)      # doctest: +SKIP
  'ablation_scales.png'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from scaleup_jax.reproduce.experiments import DEFAULT_SCALES, FIG2_FACTORS


def _line_axes(xlabel: str, ylabel: str, title: str | None = None) -> tuple[Figure, object]:
  """One 5 x 3.6 in panel with its axis labels and (optional) title: the ablations' layout."""
  fig = Figure(figsize=(5, 3.6))
  ax = fig.subplots()
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=9)
  return fig, ax


def save(fig: Figure, path: Path, command: str) -> str:
  """Saves ``fig`` as a PNG with the command that made it printed along the bottom.

  Args:
    fig: the figure.
    path: the ``.png`` to write.
    command: the command line, or ``''`` for none.

  Returns:
    ``path``'s file name (for the links of ``summary.md``).
  """
  if command:
    fig.text(0.005, 0.005, f'$ {command}', fontsize=6, color='0.35', family='monospace',
             ha='left', va='bottom')
    fig.tight_layout(rect=(0, 0.04, 1, 1))
  else:
    fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches='tight')  # keeps a legend beside the panel
  return Path(path).name


def table1(record: dict, extras: dict) -> Figure:
  """AUROC with its bootstrap interval, one marker per model and detector column."""
  rows, titles, intervals = record['models'], record['columns'], record['auroc']
  fig = Figure(figsize=(min(14.0, 1.1 * len(titles) + 2.5), 4.2))
  ax = fig.subplots()
  width = 0.8 / max(1, len(rows))
  for i, model in enumerate(rows):
    xs, ys, err = [], [], [[], []]
    for j, title in enumerate(titles):
      ci = intervals[model].get(title)
      if ci is None:
        continue
      xs.append(j + (i - (len(rows) - 1) / 2) * width)
      ys.append(ci['auroc'])
      err[0].append(ci['auroc'] - ci['low'])
      err[1].append(ci['high'] - ci['auroc'])
    ax.errorbar(xs, ys, yerr=err, fmt='o', capsize=3, label=model)
  ax.axhline(0.5, color='k', ls=':', lw=0.8)
  ax.set_xticks(range(len(titles)), titles, rotation=30, ha='right', fontsize=8)
  ax.set_ylabel('AUROC (95% bootstrap CI)')
  ax.set_ylim(-0.02, 1.02)
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  ax.set_title('Detection AUROC per model and detector')
  return fig


def fig2(record: dict, extras: dict) -> Figure:
  """Mean (± std) confidence vs multiplication factor; one panel per model."""
  fig = Figure(figsize=(9, 3.6))
  axes = fig.subplots(1, 2, sharey=True)
  for ax, (title, entry) in zip(axes, record['models'].items()):
    ax.set_title(title if 'skipped' not in entry else f"{title}: skipped")
    for name, color in (('benign', 'tab:blue'), ('poisoned', 'tab:red')):
      if name not in entry:
        continue
      m, s = np.asarray(entry[name]['mean']), np.asarray(entry[name]['std'])
      ax.plot(FIG2_FACTORS, m, 'o-', color=color, label=f"{name} ({entry[name]['count']})")
      ax.fill_between(FIG2_FACTORS, np.clip(m - s, 0, 1), np.clip(m + s, 0, 1), color=color,
                      alpha=0.15)
    ax.set_xlabel('multiplication factor n')
    ax.set_xticks(FIG2_FACTORS)
    ax.legend(fontsize=8)
  axes[0].set_ylabel('confidence on the original label')
  return fig


def fig3(record: dict, extras: dict) -> Figure:
  """Box plot of benign SPC per true class (``extras``: ``spc``, ``labels``), target in red."""
  spc, labels, target = extras['spc'], extras['labels'], record['target']
  k = len(record['per_class'])
  fig = Figure(figsize=(7, 3.6))
  ax = fig.subplots()
  present = [c for c in range(k) if record['per_class'][c]['count']]
  box = ax.boxplot([spc[labels == c] for c in present], positions=present, widths=0.6,
                   patch_artist=True, showmeans=True)
  for c, patch in zip(present, box['boxes']):
    patch.set_facecolor('tab:red' if c == target else 'tab:blue')
    patch.set_alpha(0.5)
  ax.set_xticks(range(k), [f'{c}*' if c == target else str(c) for c in range(k)])
  ax.set_xlabel(f'true class (* = target class {target})')
  ax.set_ylabel('SPC (benign images)')
  ax.set_ylim(-0.05, 1.05)
  ax.set_title(f'SPC per class, {Path(record["ckpt"]).name}, '
               f'S = {{{", ".join(f"{s:g}" for s in DEFAULT_SCALES)}}}')
  return fig


def roc(record: dict, extras: dict) -> Figure:
  """ROC curves per mode, one panel per model (``extras['curves']``)."""
  curves = extras['curves']
  n = len(curves)
  fig = Figure(figsize=(3.6 * n, 3.6))
  axes = fig.subplots(1, n, squeeze=False)
  for ax, (name, curve) in zip(axes[0], curves):
    for mode, (fpr, tpr, auc) in curve.items():
      ax.plot(fpr, tpr, label=f'{mode} ({auc:.3f})')
    ax.plot([0, 1], [0, 1], 'k:', lw=0.8)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel('false-positive rate')
    ax.legend(fontsize=7, loc='lower right')
  axes[0][0].set_ylabel('true-positive rate')
  return fig


def ablation_scales(record: dict, extras: dict) -> Figure:
  """AUROC per mode against the scale set."""
  rows = record['rows']
  fig, ax = _line_axes('scale set S', 'AUROC', f'AUROC vs scale set, {Path(record["ckpt"]).name}')
  labels = ['{' + ','.join(f'{s:g}' for s in r['scales'][:5]) + (',..' if r['size'] > 5 else '')
            + '}' for r in rows]
  for mode in ('data-free', 'data-limited'):
    ax.plot(range(len(rows)), [r[mode] for r in rows], 'o-', label=mode)
  ax.set_xticks(range(len(rows)), labels, rotation=25, ha='right', fontsize=7)
  ax.legend(fontsize=8)
  return fig


def ablation_defense_size(record: dict, extras: dict) -> Figure:
  """Data-limited AUROC (mean ± std over draws) against defender images per class."""
  rows, data_free = record['rows'], record['data_free_auroc']
  fig, ax = _line_axes('benign images per class',
                       f"AUROC (mean ± std, {len(extras['defense_seeds'])} draws)",
                       f'Data-limited AUROC vs defender images, {Path(record["ckpt"]).name}')
  ax.errorbar([r['per_class'] for r in rows], [r['mean'] for r in rows],
              yerr=[r['std'] for r in rows], fmt='o-', capsize=3, label='data-limited')
  ax.axhline(data_free, color='tab:orange', ls='--', label=f'data-free ({data_free:.3f})')
  ax.set_xscale('log')
  ax.legend(fontsize=8)
  return fig


def ablation_noise(record: dict, extras: dict) -> Figure:
  """AUROC against the noise std, with the scaling AUROCs as dashed lines."""
  rows, scaling = record['rows'], record['scaling']
  fig, ax = _line_axes('noise std (pixels in [0, 1])', 'AUROC',
                       f'Noise vs amplification, {Path(record["ckpt"]).name}')
  for mode, color in (('data-free', 'tab:blue'), ('data-limited', 'tab:orange')):
    ax.plot([r['std'] for r in rows], [r[mode] for r in rows], 'o-', color=color,
            label=f'noise, {mode}')
    ax.axhline(scaling[mode], color=color, ls='--', lw=1, label=f'scaling, {mode}')
  ax.legend(fontsize=7)
  return fig


def sweep(record: dict, extras: dict) -> Figure:
  """AUROC per mode against the swept quantity; one curve per training schedule."""
  rows, x_name = record['rows'], extras['x_name']
  modes, schedules, all_poisoned = extras['modes'], extras['schedules'], extras['all_poisoned']
  fig, ax = _line_axes(x_name.replace('_', ' '), 'AUROC')
  for k, schedule in enumerate(schedules):
    group = [r for r in rows if r['schedule'] == schedule]
    for i, mode in enumerate(modes):
      label = (mode.replace('(all)', '(all poisoned)') if i >= 2 else
               mode + (' (successful poisoned)' if all_poisoned else ''))
      if len(schedules) > 1:
        label += f'; {schedule}'
      ax.plot([r[x_name] for r in group], [r[mode] for r in group],
              (('o', '^', 'D', 'v') if i < 2 else ('s', '<', 'p', '>'))[k % 4]
              + ('-' if i < 2 else '--'),
              color=('tab:blue', 'tab:orange')[i % 2], alpha=1.0 if k == 0 else 0.6,
              label=label)
  if x_name == 'poison_rate':
    ax.set_xscale('log')
  if len(schedules) > 1:  # many curves: the legend beside the panel, not over the points
    fig.set_size_inches(9, 3.6)
    ax.legend(fontsize=6, loc='upper left', bbox_to_anchor=(1.02, 1.0))
  else:
    ax.legend(fontsize=7)
  return fig


def _pooled_with_spread(ax, x, rows, parts: str, what: str, dodge: float) -> None:
  """Pooled AUROC per mode at ``x``; bars span the non-NaN AUROCs of ``row[parts][mode]``."""
  for i, mode in enumerate(('data-free', 'data-limited')):
    y = np.array([r[mode] for r in rows])
    lo, hi = [], []
    for r, yy in zip(rows, y):
      vals = [v for v in r[parts][mode] if not np.isnan(v)] or [yy]
      lo.append(yy - min(vals))
      hi.append(max(vals) - yy)
    ax.errorbar(x + (i - 0.5) * dodge, y, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)],
                fmt='o-', capsize=3, color=('tab:blue', 'tab:orange')[i],
                label=f'{mode} (pooled; bars: {what})')


def multi_label(record: dict, extras: dict) -> Figure:
  """Pooled AUROC against the share of infected labels; bars span the per-label AUROCs."""
  del extras
  rows = record['rows']
  fig, ax = _line_axes('share of infected labels', 'AUROC')
  x = np.array([r['share'] for r in rows])
  _pooled_with_spread(ax, x, rows, 'per_label', 'per label', 0.01)
  paper = record['paper_all_labels_auroc']
  ax.axhline(paper['value'], color='grey', ls=':', label=f"paper at 100%: >= {paper['value']}")
  ax.set_xlim(0, 1.05)
  ax.legend(fontsize=7)
  return fig


def multi_trigger(record: dict, extras: dict) -> Figure:
  """Pooled AUROC against the number of triggers; bars span the per-trigger AUROCs."""
  del extras
  rows = record['rows']
  fig, ax = _line_axes('triggers into the one target label', 'AUROC')
  x = np.array([r['num_triggers'] for r in rows], float)
  _pooled_with_spread(ax, x, rows, 'per_trigger', 'per trigger', 0.05)
  ax.set_xticks(sorted(set(x)))
  ax.legend(fontsize=7)
  return fig


def adaptive(record: dict, extras: dict) -> Figure:
  """ASR under noise, and what noise alone sends to the target, per model."""
  fig, ax = _line_axes('Gaussian noise std', 'fraction predicted as the target')
  for (role, r), color in zip(record['models'].items(), ('tab:red', 'tab:blue')):
    ax.plot(record['noise_stds'], r['asr'], 'o-', color=color,
            label=f"{role} ({Path(r['ckpt']).name}): ASR")
    ax.plot(record['noise_stds'], r['benign_to_target'], 'x--', color=color, alpha=0.7,
            label=f'{role}: benign, no trigger, sent to target')
  ax.set_ylim(-0.02, 1.02)
  ax.legend(fontsize=7)
  return fig



def robustness(record: dict, extras: dict) -> Figure:
  """AUROC against the noise std: one panel per model, noisy benign vs noisy poisoned."""
  del extras
  models = record['models']
  fig = Figure(figsize=(4.6 * len(models), 3.6))
  axes = np.atleast_1d(fig.subplots(1, len(models), squeeze=False)[0])
  for ax, m in zip(axes, models):
    stds = [r['std'] for r in m['rows']]
    for setting, ls in (('benign', 'o-'), ('poisoned', 's--')):
      for mode, color in (('data-free', 'tab:blue'), ('data-limited', 'tab:orange')):
        ax.plot(stds, [r[setting][mode] for r in m['rows']], ls, color=color,
                label=f'{mode}, noisy {setting}')
    ax.plot(stds, [r['ba'] for r in m['rows']], ':', color='grey', label='BA (noisy)')
    ax.plot(stds, [r['asr'] for r in m['rows']], '-.', color='tab:red', alpha=0.6,
            label='ASR (noisy)')
    ax.set_xlabel('Gaussian noise std')
    ax.set_ylabel('AUROC / rate')
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{Path(m['ckpt']).name} (target {m['target']})", fontsize=8)
    ax.legend(fontsize=6)
  return fig
