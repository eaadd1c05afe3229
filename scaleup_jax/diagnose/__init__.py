"""A pre-deployment check of a model for SCALE-UP, from benign images alone.

A defender who knows nothing about any attack can still measure, on a few
benign images of their own, how their model reacts to amplification:

* **sink classes**: the classes that amplified images fall into. On the clean
  zoo ResNet-20, 88% of CIFAR-10 test images amplified x11 are called
  airplane. A backdoor whose target is a sink class is hard for SCALE-UP: benign
  images of that class keep their label under amplification as poisoned ones do
  (high benign SPC, false positives), and the data-limited mode, which
  standardises by the predicted class's benign statistics, sees nothing there.
* **per-class benign SPC**: the false-positive rate SCALE-UP will have on each
  class at each threshold, before any attack.
* **scale sets**: the same measurements for several candidate scale sets, and
  the one that leaves the fewest benign images at SPC = 1 (where poisoned
  images sit), hence the best true-positive rate to expect at a small FPR.

:func:`diagnose` computes (numbers only); :mod:`.plots` draws and :mod:`.report`
writes; ``python -m eval.diagnose --ckpt DIR`` runs all three.

References:
  Guo et al., "SCALE-UP", ICLR 2023, Sec. 3 (SPC, Eq. 1-4), App. P (failures).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from scaleup_jax import scaleup
from scaleup_jax.validation import InputError

# Candidate scale sets compared by the diagnosis (the paper's default first).
CANDIDATE_SCALES = {
    'paper (3,5,7,9,11)': (3.0, 5.0, 7.0, 9.0, 11.0),
    'gentle (1.5,2,2.5,3,3.5)': (1.5, 2.0, 2.5, 3.0, 3.5),
    'mid (2,3,4,5,6)': (2.0, 3.0, 4.0, 5.0, 6.0),
    'wide (2,3,5,7,9,11,13)': (2.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0),
}
# A class is a sink when it receives at least this share of the images
# amplified by the set's largest factor, and at least twice its own share of
# the unscaled predictions.
SINK_SHARE = 0.25
# Relative cut in the FPR at SPC = 1 that another scale set must bring to be recommended.
MIN_GAIN = 0.25


def label_matrix(apply_fn: Callable, variables, images, scales, batch_size: int = 256,
                 progress: bool = False) -> np.ndarray:
  """``(N, 1 + S)`` labels of ``images`` unscaled and at each scale (padded batches)."""
  fn = scaleup.make_label_matrix_fn(apply_fn, tuple(float(s) for s in scales), 'map')
  return scaleup.detect_batched(fn, images, batch_size, variables, progress=progress,
                                desc='diagnose')


def sink_shares(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Share of images predicted as each class, per column of the label matrix.

  Args:
    labels: ``(N, 1 + S)`` label matrix (column 0 unscaled).
    num_classes: ``K``.

  Returns:
    float ``(1 + S, K)``; row ``j`` sums to 1.

  Example:
    >>> sink_shares(np.array([[1, 0], [2, 0]]), 3)
    array([[0. , 0.5, 0.5],
           [1. , 0. , 0. ]])
  """
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.shape[0] == 0:
    raise InputError(f'labels must be a non-empty (N, 1 + S) matrix, got shape {labels.shape}')
  out = np.zeros((labels.shape[1], num_classes))
  for j in range(labels.shape[1]):
    out[j] = np.bincount(labels[:, j], minlength=num_classes)[:num_classes] / len(labels)
  return out


def sink_classes(shares: np.ndarray, min_share: float = SINK_SHARE) -> list[int]:
  """Classes holding ``>= min_share`` of the most-amplified images and ``>= 2x`` their unscaled share."""
  last, first = shares[-1], shares[0]
  sinks = [k for k in range(shares.shape[1]) if last[k] >= min_share and last[k] >= 2 * first[k]]
  return sorted(sinks, key=lambda k: -last[k])


def per_class_spc(spc: np.ndarray, groups: np.ndarray, num_classes: int) -> dict:
  """Mean SPC, share at SPC = 1 and count per class ``groups`` (true or predicted)."""
  out = {'mean': [], 'at_one': [], 'count': []}
  for k in range(num_classes):
    s = spc[groups == k]
    out['count'].append(int(s.size))
    out['mean'].append(float(s.mean()) if s.size else float('nan'))
    out['at_one'].append(float(np.mean(s >= 1.0)) if s.size else float('nan'))
  return out


def summarise_scale_set(labels: np.ndarray, true_labels: np.ndarray, num_classes: int) -> dict:
  """The diagnosis numbers of one scale set from its label matrix."""
  spc = np.asarray(scaleup.spc_from_labels(labels))
  shares = sink_shares(labels, num_classes)
  return {
      'sink_shares': shares.tolist(),
      'sinks': sink_classes(shares),
      'benign_spc_mean': float(spc.mean()),
      # Flagging SPC = 1 (the usual place of poisoned images) costs this FPR:
      'fpr_at_spc_one': float(np.mean(spc >= 1.0)),
      # Smallest FPR a deterministic threshold can have while still flagging SPC = 1.
      'fpr_by_threshold': {f'{t:.2f}': float(np.mean(spc > t)) for t in np.unique(spc)},
      'by_true_class': per_class_spc(spc, true_labels, num_classes),
      'by_predicted_class': per_class_spc(spc, labels[:, 0], num_classes),
      'accuracy': float(np.mean(labels[:, 0] == true_labels)),
  }


def recommend(sets: dict, class_names: Sequence[str]) -> dict:
  """Which scale set and mode to use, and the FPR to expect, in words and numbers."""
  paper = next(iter(sets))
  # Another set replaces the first (the paper's) only if it cuts the FPR at SPC = 1 by a
  # quarter or more: a few tenths of a point do not pay for extra forward passes.
  best = min(sets, key=lambda n: sets[n]['fpr_at_spc_one'])
  if sets[best]['fpr_at_spc_one'] > (1 - MIN_GAIN) * sets[paper]['fpr_at_spc_one']:
    best = paper
  s = sets[best]
  sinks = s['sinks'] or sets[paper]['sinks']
  names = [class_names[k] for k in sinks]
  mode = 'data-free'
  why = ('data-free SPC with a threshold calibrated on benign images (the data-limited mode '
         'standardises by the predicted class, and a backdoor into a sink class hides in that '
         "class's already-high benign SPC)") if sinks else (
         'either mode; no sink class, so the data-limited standardisation has room to work')
  if not sinks:
    mode = 'data-limited'
  return {'scale_set': best, 'scales': list(s['scales']), 'mode': mode,
          'sink_classes': sinks, 'sink_names': names, 'why': why,
          'expected_fpr_flagging_spc_one': s['fpr_at_spc_one'],
          'paper_set_fpr_flagging_spc_one': sets[paper]['fpr_at_spc_one']}


def diagnose(apply_fn: Callable, variables, images, true_labels, num_classes: int,
             class_names: Sequence[str] | None = None,
             scale_sets: dict | None = None, batch_size: int = 256,
             progress: bool = False) -> dict:
  """SCALE-UP's behaviour on a model, measured on benign images only.

  Args:
    apply_fn: ``(variables, images (B, H, W, C)) -> logits (B, K)``.
    variables: the model's variables.
    images: ``(N, H, W, C)`` benign images in [0, 1] (a few per class).
    true_labels: ``(N,)`` their labels.
    num_classes: ``K``.
    class_names: names for the report (default ``'0'..'K-1'``).
    scale_sets: ``{name: scales}``; default :data:`CANDIDATE_SCALES`.
    batch_size: images per compiled call.
    progress: progress bars.

  Returns:
    A JSON-able dict: per scale set the shares of amplified images per class,
    the sink classes, benign SPC per class (true and predicted), the FPR of
    flagging SPC = 1 and of every threshold; and a ``recommendation``.

  Example:
    >>> d = diagnose(run.apply_fn, run.variables, x, y, 10)
    >>> d['recommendation']['sink_names']
    ['0']
  """
  true_labels = np.asarray(true_labels)
  if true_labels.shape != (len(images),):
    raise InputError(f'true_labels must have shape ({len(images)},), got {true_labels.shape}')
  class_names = list(class_names) if class_names is not None else [str(k) for k in
                                                                   range(num_classes)]
  sets = {}
  for name, scales in (scale_sets or CANDIDATE_SCALES).items():
    labels = label_matrix(apply_fn, variables, images, scales, batch_size, progress)
    sets[name] = {'scales': [float(s) for s in scales],
                  **summarise_scale_set(labels, true_labels, num_classes)}
  return {'num_images': int(len(images)), 'num_classes': int(num_classes),
          'class_names': class_names, 'scale_sets': sets,
          'recommendation': recommend(sets, class_names)}
