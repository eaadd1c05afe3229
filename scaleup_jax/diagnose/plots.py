"""Figures of a diagnosis (:func:`scaleup_jax.diagnose.diagnose`): draw only."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_diagnosis(result: dict, path) -> Path:
  """Where amplified images go (heatmap per scale) and benign SPC per class, one PNG."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  names = result['class_names']
  sets = result['scale_sets']
  first = next(iter(sets))
  s = sets[first]
  shares = np.asarray(s['sink_shares'])
  rows = ['x1'] + [f'x{f:g}' for f in s['scales']]
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={'width_ratios': [1.3, 1]})
  im = axes[0].imshow(shares, cmap='viridis', vmin=0, vmax=1, aspect='auto')
  axes[0].set_xticks(range(len(names)), names, rotation=45, ha='right')
  axes[0].set_yticks(range(len(rows)), rows)
  for (j, k), v in np.ndenumerate(shares):
    if v >= 0.05:
      axes[0].text(k, j, f'{v:.2f}', ha='center', va='center', fontsize=7,
                   color='black' if v > 0.5 else 'white')
  axes[0].set_title(f'share of benign images predicted as each class\n(scale set {first})')
  fig.colorbar(im, ax=axes[0], fraction=0.04)
  x = np.arange(len(names))
  width = 0.8 / len(sets)
  for i, (name, d) in enumerate(sets.items()):
    axes[1].bar(x + i * width - 0.4 + width / 2, d['by_true_class']['mean'], width, label=name)
  axes[1].set_xticks(x, names, rotation=45, ha='right')
  axes[1].set_ylim(0, 1)
  axes[1].set_ylabel('mean benign SPC (by true class)')
  axes[1].set_title('benign SPC per class: the FPR SCALE-UP pays there')
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
