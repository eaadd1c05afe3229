"""Detection metrics: AUROC and true-positive rate at fixed false-positive rates."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from scaleup_jax.scaleup import rates_at_threshold, threshold_for_fpr
from scaleup_jax.validation import InputError


def auroc(benign_scores, poisoned_scores) -> float:
  """AUROC of ``poisoned`` (positives) against ``benign`` (negatives): the project's one AUROC.

  ``P(poisoned > benign) + P(poisoned == benign) / 2`` over all pairs
  (``sklearn.metrics.roc_auc_score``).

  Example:
    >>> auroc([0.1, 0.5], [0.5, 0.9])
    0.875
  """
  b = np.asarray(benign_scores, np.float64).reshape(-1)
  p = np.asarray(poisoned_scores, np.float64).reshape(-1)
  if b.size == 0 or p.size == 0:
    raise InputError(f'AUROC needs benign and poisoned scores; got {b.size} and {p.size}')
  return float(roc_auc_score(np.r_[np.zeros(b.size), np.ones(p.size)], np.r_[b, p]))


def detection_metrics(benign_scores, poisoned_scores, fprs=(0.01, 0.05)) -> dict:
  """AUROC of ``poisoned`` (positives) vs ``benign`` (negatives), and TPR at FPRs.

  Higher scores mean "more likely poisoned". The TPR at a target FPR uses the
  threshold of :func:`~scaleup_jax.scaleup.threshold_for_fpr` on the benign
  scores themselves, and reports the FPR actually achieved (ties in discrete
  scores can keep it below the target, and then the TPR too: with SPC, if more
  than 5% of benign images have SPC = 1, no deterministic threshold reaches 5%
  FPR with a non-zero TPR). ``tpr@Xfpr_interp`` is the ROC curve interpolated
  at exactly X, i.e. the rate a randomised tie-break at the threshold achieves,
  which is what most papers plot.
  """
  b = np.asarray(benign_scores, np.float64)
  p = np.asarray(poisoned_scores, np.float64)
  out = {'auroc': auroc(b, p), 'num_benign': int(b.size), 'num_poisoned': int(p.size)}
  y = np.concatenate([np.zeros(b.size), np.ones(p.size)])
  s = np.concatenate([b, p])
  for fpr in fprs:
    r = rates_at_threshold(b, p, threshold_for_fpr(b, fpr))
    out[f'tpr@{fpr:g}fpr'] = r['tpr']
    out[f'achieved_fpr@{fpr:g}fpr'] = r['fpr']
    out[f'threshold@{fpr:g}fpr'] = r['threshold']
  roc_fpr, roc_tpr, _ = roc_curve(y, s)
  for fpr in fprs:
    out[f'tpr@{fpr:g}fpr_interp'] = float(np.interp(fpr, roc_fpr, roc_tpr))
  return out


def roc_points(benign_scores, poisoned_scores):
  """``(fpr, tpr)`` arrays of the ROC curve."""
  y = np.concatenate([np.zeros(len(benign_scores)), np.ones(len(poisoned_scores))])
  s = np.concatenate([benign_scores, poisoned_scores])
  fpr, tpr, _ = roc_curve(y, s)
  return fpr, tpr
