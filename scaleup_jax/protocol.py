"""Checks behind the choices of the paper's evaluation protocol (docs/reproduction.md).

* :func:`perturbation_effects`: BA, ASR and the rate at which benign images are
  sent to the target, on clean images, on noisy copies (each kind and magnitude
  of :func:`scaleup_jax.evaluate.add_noise_copies`) and on JPEG re-encoded
  poisoned images: the paper's noise "will not significantly affect the attack
  success rate and the benign accuracy" (Sec. 5.1), which this measures.
* :func:`form_aurocs`: AUROC of every data-limited form of
  :func:`scaleup_jax.scaleup.data_limited_scores`, with the defender's
  statistics grouped by predicted and by true class, on stored score files.

``python -m eval.protocol noise|forms`` runs them on zoo models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from scaleup_jax import evaluate, jpeg, scaleup
from scaleup_jax.metrics import detection_metrics
from scaleup_jax.validation import InputError

NOISES = (('uniform', 0.02), ('uniform', 0.05), ('gaussian', 0.02), ('gaussian', 0.05))


def perturbation_effects(key, predict_fn: Callable, images, labels, poisoned, target: int,
                         noises: Sequence[tuple[str, float]] = NOISES,
                         jpeg_quality: int | None = jpeg.DATASET_QUALITY) -> dict:
  """BA, ASR and benign-to-target rate under each perturbation of the test images.

  Args:
    key: PRNG key of the noise (copy of the benign images: ``fold_in(key, 0)``,
      of the poisoned ones: ``fold_in(key, 1)``).
    predict_fn: ``images -> labels``.
    images: ``(N, H, W, C)`` benign test images in [0, 1].
    labels: ``(N,)`` their true labels.
    poisoned: ``(P, H, W, C)`` the poisoned versions of the images whose true
      class is not ``target``, in the same order.
    target: the backdoor's target class.
    noises: ``(kind, magnitude)`` pairs.
    jpeg_quality: also re-encode the poisoned images at this JPEG quality
      (None: skip).

  Returns:
    ``{perturbation: {'ba', 'asr', 'benign_to_target'}}`` with perturbations
    ``'none'``, ``'<kind> <magnitude>'`` and ``'jpeg<quality> (poisoned)'``;
    ``benign_to_target`` is over the non-target benign images.

  Example:
    >>> effects = perturbation_effects(jax.random.key(1), predict, x, y,
    ...                                trigger.apply(x[y != run.target]), run.target)
    >>> sorted(effects)
    ['gaussian 0.02', 'gaussian 0.05', 'jpeg75 (poisoned)', 'none', 'uniform 0.02', 'uniform 0.05']
  """
  labels = np.asarray(labels)
  non_target = labels != target
  if int(non_target.sum()) != len(poisoned):
    raise InputError(f'{len(poisoned)} poisoned images for {int(non_target.sum())} non-target '
                     'images: poison exactly the images whose label is not the target')

  def rates(benign, pois):
    bp, pp = np.asarray(predict_fn(benign)), np.asarray(predict_fn(pois))
    return {'ba': float(np.mean(bp == labels)), 'asr': float(np.mean(pp == target)),
            'benign_to_target': float(np.mean(bp[non_target] == target))}

  out = {'none': rates(images, poisoned)}
  for kind, m in noises:
    out[f'{kind} {m:g}'] = rates(
        evaluate.add_noise_copies(jax.random.fold_in(key, 0), images, 1, kind, m),
        evaluate.add_noise_copies(jax.random.fold_in(key, 1), poisoned, 1, kind, m))
  if jpeg_quality is not None:
    out[f'jpeg{jpeg_quality} (poisoned)'] = rates(images, jpeg.jpeg_roundtrip(poisoned, jpeg_quality))
  return out


def form_aurocs(benign_spc, benign_pred, positive_spc, positive_pred, defense_spc, defense_pred,
                defense_labels, num_classes: int, num_scales: int) -> dict:
  """AUROC of each data-limited form x grouping, and data-free, on one model's scores.

  Args:
    benign_spc, benign_pred: ``(B,)`` SPC and predictions of the negatives.
    positive_spc, positive_pred: ``(P,)`` of the positives.
    defense_spc, defense_pred, defense_labels: ``(M,)`` of the defender's images.
    num_classes: K.
    num_scales: ``|S|`` (for the sigma floor).

  Returns:
    ``{'data-free': auroc, '<form>/<group_by>': auroc, ..., 'balance/<group_by>': lambda}``.
  """
  out = {'data-free': detection_metrics(benign_spc, positive_spc)['auroc']}
  for group_by in scaleup.GROUP_BY:
    st = scaleup.fit_class_stats(defense_spc, defense_pred, num_classes, num_scales=num_scales,
                                 labels=defense_labels, group_by=group_by)
    for form in scaleup.DATA_LIMITED_FORMS:
      out[f'{form}/{group_by}'] = detection_metrics(
          scaleup.data_limited_scores(benign_spc, benign_pred, st, form),
          scaleup.data_limited_scores(positive_spc, positive_pred, st, form))['auroc']
    out[f'balance/{group_by}'] = st.balance
  return out


def stored_form_aurocs(model_dir, test, batch_size: int = 256) -> dict:
  """:func:`form_aurocs` on ``<model_dir>/scaleup.{json,scores.npz}`` from ``eval.compare``.

  The stored files hold the evaluation images' SPC and predictions and the
  per-predicted-class statistics only; the defender's SPC is recomputed on the
  same split (``evaluate.split_test_set`` with the stored seed and sizes) and
  checked against the stored statistics.

  Args:
    model_dir: one model's directory of an ``eval.compare`` output.
    test: the test split (``scaleup_jax.data.load_split``).
    batch_size: images per compiled call.

  Returns:
    :func:`form_aurocs`'s dictionary plus ``attack``, ``target``, ``num_benign``,
    ``num_positives`` and ``stored data-limited`` (the AUROC ``eval.compare``
    reported).
  """
  from scaleup_jax import checkpoint as ckpt_lib
  model_dir = Path(model_dir)
  saved = json.loads((model_dir / 'scaleup.json').read_text())
  s = np.load(model_dir / 'scaleup.scores.npz')
  fooled = s['successful']
  k_split = jax.random.split(jax.random.key(saved['seed']), 3)[0]
  per_class = int(saved['num_defense']) // test.num_classes
  defense_idx, _ = evaluate.split_test_set(k_split, test.labels, test.num_classes, per_class, 0)
  run = ckpt_lib.load_run(saved['ckpt'])
  det = scaleup.make_detector(run.apply_fn, saved['scales'], 'vmap')
  d_pred, d_spc = scaleup.detect_batched(det, test.images[defense_idx], batch_size, run.variables)
  check = scaleup.fit_class_stats(d_spc, d_pred, test.num_classes, num_scales=len(saved['scales']))
  if not np.allclose(check.mean, saved['class_stats']['mean'], atol=1e-5):
    raise InputError(f'{str(model_dir)!r}: the recomputed defender statistics differ from the '
                     'stored ones (another split or model?)')
  res = form_aurocs(s['benign_score'], s['benign_pred'], s['poisoned_score'][fooled],
                    s['poisoned_pred'][fooled], d_spc, d_pred, test.labels[defense_idx],
                    test.num_classes, len(saved['scales']))
  return {'attack': saved['attack'], 'target': saved['target_label'],
          'num_benign': int(len(s['benign_score'])), 'num_positives': int(fooled.sum()),
          'stored data-limited': saved['detection']['data-limited']['auroc'], **res}
