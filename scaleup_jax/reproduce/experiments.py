"""The computations of :mod:`scaleup_jax.reproduce`: one function ``f(ctx) -> Outcome`` per experiment.

Each experiment function queries the models through the library's one scoring
path (``detectors.make('scaleup')``'s label matrix, ``scaleup.fit_consistency``
and ``consistency_scores``, ``metrics``) and returns an :class:`Outcome`: the
numbers that go to ``reproduce.json`` (``record``) and the arrays its figure and
table need beside them (``extras``). Nothing here draws or writes markdown;
:mod:`.plots` and :mod:`.report` do, and :mod:`.run` holds the registry that
ties the three together.

* ``table1``: AUROC per attacked model x detector (paper Table 1) through
  :func:`scaleup_jax.compare.compare` (models already in its directory with the
  same settings are reused, so the table grows one model at a time), plus
  percentile-bootstrap intervals (:func:`bootstrap_auroc`) from the per-detector
  score files it writes.
* ``fig2``: mean softmax confidence on the originally predicted label vs the
  multiplication factor n = 1..11, benign vs poisoned, clean vs attacked model
  (paper Fig. 2).
* ``fig3``: SPC of benign images per true class under an attacked model.
* ``roc``: ROC curves of SCALE-UP (data-free, data-limited) per attacked model.
* ``ablation_scales``: AUROC vs the scale set (paper Fig. 11), from one label
  matrix over the largest set, sliced (:func:`slice_label_matrix`).
* ``ablation_defense_size``: data-limited AUROC vs benign images per class
  (paper Fig. 12), several seeded draws.
* ``ablation_noise``: consistency under additive Gaussian noise instead of
  amplification (paper Table 7 analog).
* ``poison_rate``, ``trigger_size``, ``adaptive``: need models trained for
  them (``rate_ckpts``, ``size_ckpts``, ``adaptive_ckpt``). Outside quick
  mode, empty options fall back to the finished runs of
  ``train/configs/badnets_sweep_resnet20.py`` under ``zoo/sweeps/`` and to
  ``zoo/cifar10_adaptive_resnet20``; reported as skipped, not as errors,
  until those run directories exist.

Positives are the poisoned images the attack fooled (predicted as the target),
as in :mod:`scaleup_jax.evaluate`. Every random choice comes from ``opts.seed``.

References:
  Guo, Li, Chen, Guo, Sun, Liu. "SCALE-UP: An Efficient Black-box Input-level
  Backdoor Detection via Analyzing Scaled Prediction Consistency". ICLR 2023.
  https://arxiv.org/abs/2302.03251
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scaleup_jax import checkpoint as ckpt_lib
from scaleup_jax import compare as compare_lib
from scaleup_jax import detectors as detectors_lib
from scaleup_jax import evaluate, integrity, scaleup
from scaleup_jax import paper as paper_lib
from scaleup_jax import paths, poison
from scaleup_jax.batching import map_batches
from scaleup_jax.metrics import auroc, detection_metrics, roc_points
from scaleup_jax.validation import InputError, check_images, check_scales

ZOO = evaluate.ZOO
CLEAN_CKPT = ZOO / 'cifar10_clean_resnet20'
SWEEPS = ZOO / 'sweeps'
# The base point shared by the poisoning-rate and trigger-size sweeps (paper Fig. 7);
# train/configs/badnets_sweep_resnet20.py trains with it.
SWEEP_BASE_RATE = 0.1
SWEEP_BASE_SIZE = 3
SWEEP_TARGET = 0  # one backdoor into this label; the issue #22 models beside them target 8
ADAPTIVE_CKPT = ZOO / 'cifar10_adaptive_resnet20'
MULTI_LABEL_PREFIX = 'multi_label_k'  # zoo/sweeps/multi_label_k<k> (train/configs/multi_label_resnet20.py)
MULTI_TRIGGER_PREFIX = 'multi_trigger_k'  # zoo/sweeps/multi_trigger_k<k> (multi_trigger_resnet20.py)
DEFAULT_SCALES = tuple(float(s) for s in scaleup.DEFAULT_SCALES)
ALL_SCALES = (3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0)
SCALE_SETS = tuple(ALL_SCALES[:k] for k in (1, 2, 3, 4, 5)) + (ALL_SCALES,)
FIG2_FACTORS = tuple(float(n) for n in range(1, 12))

# The paper's CIFAR-10 AUROCs (Table 1, transcribed in scaleup_jax.paper), keyed
# by (attack, column title of scaleup_jax.compare): {key: (value, source)}.
PAPER_AUROC: dict = {
    (attack, title): (value, paper_lib.TABLE1.source)
    for (attack, det, mode), value in paper_lib.table1_by_detector().items()
    for title, d, m in compare_lib.columns((det,)) if m == mode}
PAPER_NOTE = ('Paper: the AUROC of the paper\'s Table 1 (CIFAR-10, ResNet) for the same attack and '
              'detector; diff = ours - paper. The adaptive attack is not in Table 1 (its one '
              'number is in the adaptive experiment), and IBD-PSC and TeCo postdate the paper.')

# App. H: the AUROC with every label infected, from the paper's text.
PAPER_ALL_LABELS_AUROC = (paper_lib.TEXT['all_labels_infected_auroc'].value,
                          paper_lib.TEXT['all_labels_infected_auroc'].source)

# The adaptive attack's AUROC (BadNets, CIFAR-10), from the paper's text.
PAPER_ADAPTIVE_AUROC = (paper_lib.TEXT['adaptive_auroc'].value,
                        paper_lib.TEXT['adaptive_auroc'].source + ' (data-free or data-limited '
                        'not stated)')

_FULL = dict(num_images=1000, num_defense_per_class=100, batch_size=256,
             detectors=detectors_lib.NAMES, num_bootstrap=1000,
             defense_sizes=(1, 5, 10, 20, 50, 100), defense_seeds=(0, 1, 2, 3, 4),
             noise_stds=(0.01, 0.03, 0.05, 0.1, 0.2, 0.3), noise_copies=5,
             adaptive_noise_stds=(0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3),
             robustness_stds=(0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1))
_QUICK = dict(num_images=48, num_defense_per_class=5, batch_size=32, detectors=('scaleup',),
              num_bootstrap=200, defense_sizes=(1, 2, 5), defense_seeds=(0, 1, 2),
              noise_stds=(0.05, 0.2), noise_copies=5, adaptive_noise_stds=(0.0, 0.1, 0.3),
              robustness_stds=(0.0, 0.05))


@dataclasses.dataclass
class ReproduceOptions:
  """Options of :func:`scaleup_jax.reproduce.reproduce` (the flags of ``eval.reproduce``).

  Fields left as None take the value of the full run or, with ``quick``, of
  the seconds-long test run (see ``_FULL`` and ``_QUICK``).
  """

  ckpt: str | None = None  # attacked model of the single-model experiments; None: zoo BadNets.
  clean_ckpt: str | None = None  # clean model of fig2; None: the zoo clean ResNet-20.
  ckpts: tuple = ()  # attacked models of table1/roc; (): (ckpt,) if given, else every zoo one.
  only: tuple = ()  # experiments to run; (): all of run.EXPERIMENTS.
  quick: bool = False
  num_images: int | None = None  # evaluation images per model before poisoning
  num_defense_per_class: int | None = None
  batch_size: int | None = None
  detectors: tuple | None = None  # table1's detectors
  compare_dir: str | None = None  # table1's eval.compare directory (reused rows); None: <out>/table1
  protocol: str | None = None  # table1: 'paper' for the paper's evaluation sets (evaluate.PROTOCOLS)
  jpeg_match: bool = False  # table1: poisoned test images JPEG re-encoded like the dataset's
  num_bootstrap: int | None = None
  defense_sizes: tuple | None = None  # ablation_defense_size: benign images per class
  defense_seeds: tuple | None = None
  noise_stds: tuple | None = None  # ablation_noise
  noise_copies: int | None = None  # noisy queries per image (the |S| of the noise variant)
  adaptive_noise_stds: tuple | None = None  # adaptive: noise added to poisoned images
  rate_ckpts: tuple = ()  # poison_rate: attacked models trained at several rates
  multi_label_ckpts: tuple = ()  # multi_label: models with several infected labels (App. H)
  multi_trigger_ckpts: tuple = ()  # multi_trigger: models with several triggers, one label (App. G)
  size_ckpts: tuple = ()  # trigger_size: attacked models with several trigger sizes
  adaptive_ckpt: str | None = None  # adaptive: the adaptive-attack model (Eq. 5)
  robustness_ckpts: tuple = ()  # robustness: models to test (): the BadNets/PhysicalBA of ckpts
  robustness_stds: tuple | None = None  # robustness: Gaussian noise on the inputs (App. L)
  seed: int = 0
  data_dir: str | None = None
  out: str = 'docs/results/reproduce'
  progress: bool = True
  command: str = ''  # recorded in every output


class Skipped(Exception):
  """An experiment that cannot run with the models at hand (not an error)."""


@dataclasses.dataclass
class Outcome:
  """What one experiment computed.

  Attributes:
    record: the experiment's numbers, as written to ``reproduce.json`` (plain
      JSON values: dicts, lists, floats, strings).
    extras: what its table and figure need beside ``record`` and that is not
      kept in ``reproduce.json``: raw score arrays of a curve, the settings a
      caption names. Empty where ``record`` is enough.
  """

  record: dict
  extras: dict = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------ statistics


def bootstrap_auroc(benign_scores, poisoned_scores, num_resamples: int = 1000, seed: int = 0,
                    level: float = 0.95, chunk: int = 100) -> dict:
  """AUROC with a percentile-bootstrap confidence interval.

  Benign and poisoned scores are resampled independently (with replacement,
  each set to its own size), and the AUROC of every resample is computed
  exactly (ties count 1/2, as in ``sklearn.metrics.roc_auc_score``) from
  multinomial counts over the sorted benign scores, so 1000 resamples of
  10,000 scores take well under a second.

  Args:
    benign_scores: ``(Nb,)`` negatives.
    poisoned_scores: ``(Np,)`` positives (higher = more likely poisoned).
    num_resamples: bootstrap resamples.
    seed: seed of the ``numpy.random.Generator`` that draws them.
    level: coverage of the interval.
    chunk: resamples drawn at once (memory ``chunk * (Nb + Np)`` floats).

  Returns:
    ``{'auroc', 'low', 'high', 'std', 'level', 'num_resamples', 'seed'}``;
    ``auroc`` is the AUROC of the data themselves.

  References:
    Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13
    (percentile intervals).
  """
  b = np.sort(np.asarray(benign_scores, np.float64).reshape(-1))
  p = np.asarray(poisoned_scores, np.float64).reshape(-1)
  if b.size == 0 or p.size == 0:
    raise InputError(f'bootstrap needs benign and poisoned scores; got {b.size} and {p.size}')
  if not 0.0 < level < 1.0:
    raise InputError(f'level must be in (0, 1); got {level}')
  nb, np_ = b.size, p.size
  lo = np.searchsorted(b, p, side='left')  # benign scores strictly below each positive
  hi = np.searchsorted(b, p, side='right')  # ... below or equal
  point = auroc(b, p)  # the project's one AUROC; the resamples use the same formula on counts
  rng = np.random.default_rng(seed)
  aucs = []
  for start in range(0, num_resamples, chunk):
    r = min(chunk, num_resamples - start)
    wb = rng.multinomial(nb, np.full(nb, 1.0 / nb), size=r)  # (r, Nb) counts
    wp = rng.multinomial(np_, np.full(np_, 1.0 / np_), size=r)  # (r, Np)
    cum = np.concatenate([np.zeros((r, 1)), np.cumsum(wb, axis=1)], axis=1)  # (r, Nb + 1)
    credit = cum[:, lo] + 0.5 * (cum[:, hi] - cum[:, lo])  # (r, Np)
    aucs.append((credit * wp).sum(axis=1) / (nb * np_))
  aucs = np.concatenate(aucs)
  q = (1.0 - level) / 2
  low, high = np.quantile(aucs, [q, 1.0 - q])
  return {'auroc': point, 'low': float(low), 'high': float(high), 'std': float(aucs.std()),
          'level': level, 'num_resamples': int(num_resamples), 'seed': int(seed)}


def slice_label_matrix(label_matrix, all_scales: Sequence[float], subset: Sequence[float]):
  """Columns of a label matrix on ``all_scales`` for a subset of its scales.

  :func:`scaleup_jax.scaleup.select_factors` (column 0 kept, the subset in
  ascending order); ``spc_from_labels`` of it equals SCALE-UP run with ``subset``.
  """
  if len(subset) == 0:
    raise InputError(f'scale subset must be non-empty and within {list(all_scales)}')
  missing = [float(s) for s in subset if float(s) not in [float(a) for a in all_scales]]
  if missing:
    raise InputError(f'scale subset {list(subset)} must lie within {list(all_scales)}; '
                     f'missing {missing}')
  return scaleup.select_factors(label_matrix, tuple(sorted(float(a) for a in all_scales)),
                                sorted({float(s) for s in subset}))[0]


# ------------------------------------------------------------------ model queries


def label_matrix(apply_fn: Callable, variables, images, scales=ALL_SCALES, batch_size: int = 256,
                 progress: bool = False, desc: str = 'labels') -> np.ndarray:
  """``(N, 1 + S)`` int32 label matrix on the ascending ``scales``, from the registry's SCALE-UP.

  The same compiled path as ``eval.detect`` (``detectors.make('scaleup')``'s ``raw``).
  """
  grid = scaleup.check_factors(sorted(float(s) for s in check_scales(scales)))
  det = detectors_lib.make('scaleup', apply_fn, key=0, scales=grid)
  return scaleup.detect_batched(lambda x: det.raw(variables, x), images, batch_size,
                                progress=progress, desc=desc)


def scaled_confidences(apply_fn: Callable, variables, images, factors=FIG2_FACTORS,
                       batch_size: int = 256, progress: bool = False):
  """Softmax confidence on the originally predicted label at each multiplication factor.

  Args:
    apply_fn: ``(variables, images (B, H, W, C)) -> logits (B, K)``.
    variables: the model's variables.
    images: ``(N, H, W, C)`` float in [0, 1].
    factors: ``(F,)`` factors n >= 1; image ``x`` is queried as ``clip(n x, 0, 1)``.
    batch_size: images per compiled call.
    progress: show a progress bar.

  Returns:
    ``(preds, conf)``: int32 ``(N,)`` predictions on the unscaled images and
    float32 ``(N, F)`` ``softmax(f(clip(n x)))[preds]``; at ``n = 1`` this is
    the model's maximum softmax probability.

  References:
    Guo et al. 2023, Fig. 2.
  """
  images = check_images(images)
  factors = jnp.asarray(check_scales(factors), jnp.float32)

  @jax.jit
  def fn(v, x):
    pred = scaleup.predict_labels(apply_fn, v, x)

    def at(n):
      prob = jax.nn.softmax(apply_fn(v, jnp.clip(n * x, 0.0, 1.0)).astype(jnp.float32), axis=-1)
      return jnp.take_along_axis(prob, pred[:, None], axis=1)[:, 0]

    return pred.astype(jnp.int32), jax.lax.map(at, factors).T  # (B,), (B, F)

  return map_batches(lambda x: fn(variables, x), images, batch_size, 'confidence', progress)


def noise_label_matrix(apply_fn: Callable, variables, images, stds: Sequence[float], copies: int,
                       key, batch_size: int = 256, progress: bool = False) -> np.ndarray:
  """Label matrices with additive Gaussian noise in place of amplification.

  For every ``std`` in ``stds``, column 0 is the prediction on ``x`` and column
  ``j`` the prediction on the ``j``-th Gaussian copy of
  :func:`scaleup_jax.evaluate.add_noise_copies` (``clip(x + std e_j, 0, 1)``,
  ``e_j ~ N(0, I)``, key ``fold_in(key, t)`` at the ``t``-th std): the noise of
  the evaluation sets, so the result does not depend on ``batch_size``.
  Labels come from ``train.predict_labels`` (one compiled function).

  Args:
    apply_fn: ``(variables, images (B, H, W, C)) -> logits (B, K)``.
    variables: the model's variables.
    images: ``(N, H, W, C)`` float in [0, 1].
    stds: ``(T,)`` noise standard deviations (pixel units), each >= 0.
    copies: noisy queries per image.
    key: a JAX PRNG key.
    batch_size: images per compiled call.
    progress: show progress bars.

  Returns:
    int32 ``(T, N, 1 + copies)``; each ``[t]`` is a label matrix for
    :func:`scaleup_jax.scaleup.consistency_scores`.
  """
  from scaleup_jax import train as train_lib
  images = check_images(images)
  if copies < 1:
    raise InputError(f'copies must be >= 1; got {copies}')
  n = images.shape[0]
  preds = np.asarray(train_lib.predict_labels(apply_fn, variables, images, batch_size), np.int32)
  out = []
  for t, std in enumerate(stds):
    if std < 0:
      raise InputError(f'noise std must be >= 0; got {std}')
    noisy = evaluate.add_noise_copies(jax.random.fold_in(key, t), images, copies, 'gaussian',
                                      float(std))
    labels = np.asarray(train_lib.predict_labels(apply_fn, variables, noisy, batch_size, progress))
    out.append(np.concatenate([preds[:, None], labels.reshape(copies, n).T], axis=1))
  return np.stack(out).astype(np.int32)


# ------------------------------------------------------------------ shared state


def _split(arr, sizes: dict) -> dict:
  """Splits axis 0 (or axis 1 for 3-d stacks over stds) of ``arr`` into named consecutive parts."""
  out, start = {}, 0
  for name, n in sizes.items():
    out[name] = arr[start : start + n] if arr.ndim < 3 else arr[:, start : start + n]
    start += n
  return out


class Context:
  """Options plus caches shared by the experiments: runs, evaluation sets, label matrices."""

  def __init__(self, opts: ReproduceOptions):
    self.opts = opts
    self.out = Path(opts.out)
    self.ckpt = paths.resolve_ckpt(opts.ckpt) if opts.ckpt else paths.zoo_model(paths.DEFAULT_MODEL)
    self.clean_ckpt = Path(opts.clean_ckpt) if opts.clean_ckpt else CLEAN_CKPT
    if opts.ckpts:
      self.attacked = [Path(c) for c in opts.ckpts]
    elif opts.ckpt:
      self.attacked = [self.ckpt]
    else:
      self.attacked = compare_lib.zoo_attacked_models()
    self._evals: dict = {}
    self._labels: dict = {}
    self._runs: dict = {}

  def eval_set(self, ckpt, backdoor: int = 0) -> evaluate.EvalSet:
    """The defender/evaluation split of an attacked model (same as ``eval.compare``'s),
    poisoned with its backdoor ``backdoor`` (0: the main one; see
    :func:`scaleup_jax.checkpoint.select_backdoor`)."""
    key = (str(Path(ckpt).absolute()), backdoor)
    if key not in self._evals:
      o = self.opts
      self._evals[key] = evaluate.prepare_eval_set(evaluate.DetectOptions(
          ckpt=str(ckpt), data_dir=o.data_dir, num_images=o.num_images,
          num_defense_per_class=o.num_defense_per_class, batch_size=o.batch_size, seed=o.seed,
          backdoor=backdoor, plot=False, progress=False))
      if backdoor == 0:
        self._runs[key[0]] = self._evals[key].run
    return self._evals[key]

  def run(self, ckpt) -> ckpt_lib.LoadedRun:
    key = str(Path(ckpt).absolute())
    if key not in self._runs:
      self._runs[key] = ckpt_lib.load_run(ckpt)
    return self._runs[key]

  def labels(self, ckpt) -> dict:
    """Label matrices over :data:`ALL_SCALES`: ``{'benign', 'poisoned', 'defense'}``."""
    key = str(Path(ckpt).absolute())
    if key not in self._labels:
      ev = self.eval_set(ckpt)
      run, o = ev.run, self.opts
      parts = {'benign': ev.benign.images, 'poisoned': ev.poisoned_images[: ev.num_poisoned],
               'defense': ev.test.images[ev.defense_idx]}
      lm = label_matrix(run.apply_fn, run.variables, np.concatenate(list(parts.values())),
                        ALL_SCALES, o.batch_size, o.progress, f'{Path(ckpt).name} labels')
      self._labels[key] = _split(lm, {k: len(v) for k, v in parts.items()})
    return self._labels[key]

  def scaleup_scores(self, ckpt, scales=DEFAULT_SCALES, defense_mask=None,
                     all_poisoned: bool = False) -> dict:
    """SCALE-UP scores of one model from the cached label matrices.

    Args:
      ckpt: an attacked run directory.
      scales: a subset of :data:`ALL_SCALES`.
      defense_mask: boolean ``(M,)`` over the defender images to fit the
        data-limited statistics on (default all).
      all_poisoned: positives are all triggered images, not only those the
        model sends to the target (paper Fig. 7b's second curve).

    Returns:
      ``{'data-free': (benign (Nb,), positives (Np,)), 'data-limited': (...)}``.
    """
    ev, lms = self.eval_set(ckpt), self.labels(ckpt)
    return _scores_from_labels(lms, ev.run.target, ev.test.num_classes, scales, defense_mask,
                               all_poisoned)


def _scores_from_labels(lms: dict, target: int, num_classes: int, scales, defense_mask=None,
                        all_poisoned: bool = False):
  """SCALE-UP scores from label matrices over :data:`ALL_SCALES`, sliced to ``scales``."""
  sl = {k: slice_label_matrix(v, ALL_SCALES, scales) for k, v in lms.items()}
  return _consistency_scores(sl, target, num_classes, defense_mask, all_poisoned)


def _consistency_scores(lms: dict, target: int, num_classes: int, defense_mask=None,
                        all_poisoned: bool = False) -> dict:
  """Data-free and data-limited scores from ``{'benign', 'poisoned', 'defense'}`` label matrices.

  The library's one scorer (:func:`scaleup_jax.scaleup.fit_consistency` and
  :func:`~scaleup_jax.scaleup.consistency_scores`, which the registry's
  ``scaleup`` detector also calls). Positives are the poisoned images predicted
  (column 0) as ``target``, or every poisoned image with ``all_poisoned``; the
  data-limited statistics are fit on the defender images (``defense_mask``).
  """
  d = np.ones(len(lms['defense']), bool) if defense_mask is None else defense_mask
  stats = scaleup.fit_consistency(lms['defense'][d], num_classes)
  _, benign = scaleup.consistency_scores(lms['benign'], stats)
  p_pred, poisoned = scaleup.consistency_scores(lms['poisoned'], stats)
  fooled = np.ones(len(p_pred), bool) if all_poisoned else p_pred == target
  if not fooled.any():
    raise InputError('no poisoned image is classified as the target (ASR = 0): no positives')
  return {m: (benign[m], poisoned[m][fooled]) for m in ('data-free', 'data-limited')}


def _aurocs(scores: dict) -> dict:
  return {mode: detection_metrics(b, p)['auroc'] for mode, (b, p) in scores.items()}


def _rel(path: Path, start: Path) -> str:
  """``path`` relative to ``start`` (with ``..`` where needed), for links in markdown."""
  return Path(os.path.relpath(Path(path).absolute(), Path(start).absolute())).as_posix()


# ------------------------------------------------------------------ experiments


def table1(ctx: Context) -> Outcome:
  """AUROC per attacked model x detector through ``compare.compare``, with bootstrap CIs.

  The intervals are recomputed from the score files ``evaluate_detection``
  writes (``<detector>.scores.npz``). For SCALE-UP's data-limited column the
  scores are rebuilt from the stored SPC and predictions and the ``class_stats``
  of ``scaleup.json``, and checked against the AUROC compare reports.
  """
  o = ctx.opts
  if not ctx.attacked:
    raise Skipped(f'needs attacked models: none found under {str(ZOO)!r}; pass --ckpts')
  out = Path(o.compare_dir) if o.compare_dir else ctx.out / 'table1'
  summary = compare_lib.compare(compare_lib.CompareOptions(
      ckpts=tuple(str(c) for c in ctx.attacked), detectors=tuple(o.detectors),
      num_images=o.num_images, num_defense_per_class=o.num_defense_per_class,
      batch_size=o.batch_size, seed=o.seed, protocol=o.protocol, jpeg_match=o.jpeg_match,
      data_dir=o.data_dir, out=str(out), progress=o.progress, command=o.command, merge=True,
      skip_done=True))
  rows, titles, mat = compare_lib.auroc_matrix(summary)
  cols = compare_lib.columns(summary['detectors'])
  intervals: dict = {}
  for i, model in enumerate(rows):
    intervals[model] = {}
    for j, (title, det, mode) in enumerate(cols):
      if np.isnan(mat[i, j]):
        continue
      b, p = _stored_scores(out / model / f'{det}.json', mode)
      ci = bootstrap_auroc(b, p, o.num_bootstrap, seed=o.seed)
      ci['auroc_compare'] = float(mat[i, j])
      ci['matches_compare'] = bool(abs(ci['auroc'] - mat[i, j]) < 1e-6)
      intervals[model][title] = ci
  firsts = {m: next(iter(summary['results'][m].values())) for m in rows}
  attacks = {m: first['attack'] for m, first in firsts.items()}
  paper = paper_side_by_side(attacks, {m: {t: ci['auroc'] for t, ci in intervals[m].items()}
                                       for m in rows}, titles)
  record = {'models': rows, 'columns': titles, 'auroc': intervals, 'paper': paper,
            'paper_note': PAPER_NOTE, 'compare_json': _rel(out / 'compare.json', ctx.out)}
  extras = {'num_images': summary['num_images'],
            'num_defense_per_class': summary['num_defense_per_class'], 'seed': o.seed,
            'num_bootstrap': o.num_bootstrap, 'attacks': attacks,
            'ba': {m: first['ba'] for m, first in firsts.items()},
            'asr': {m: first['asr'] for m, first in firsts.items()},
            'compare_md': _rel(out / 'compare.md', ctx.out),
            'protocol_words': compare_lib.protocol_words(summary)}
  return Outcome(record, extras)


def paper_side_by_side(attacks: dict, ours: dict, titles: Sequence[str]) -> dict:
  """Our AUROC beside the paper's Table 1 cell of the same attack and detector column.

  Args:
    attacks: ``{model: config.attack}``.
    ours: ``{model: {column title: AUROC}}`` (titles of :func:`scaleup_jax.compare.columns`).
    titles: the columns to compare, in order.

  Returns:
    ``{model: {title: {'paper', 'ours', 'diff', 'source'}}}`` for every cell the
    paper has (``diff = ours - paper``; ``ours`` None where we have no number).

  Example:
    >>> paper_side_by_side({'m': 'wanet'}, {'m': {'SCALE-UP (data-free)': 0.906}},
    ...                    ['SCALE-UP (data-free)'])['m']['SCALE-UP (data-free)']['diff']
    -0.012
  """
  out = {}
  for model, attack in attacks.items():
    row = {}
    for title in titles:
      if (attack, title) not in PAPER_AUROC:
        continue
      value, source = PAPER_AUROC[(attack, title)]
      mine = ours.get(model, {}).get(title)
      row[title] = {'paper': value, 'ours': mine, 'source': source,
                    'diff': None if mine is None else round(float(mine) - value, 6)}
    out[model] = row
  return out


def _stored_scores(json_path: Path, mode: str):
  """``(benign, positives)`` of one column from ``evaluate_detection``'s JSON and score file.

  The score file is read with :func:`scaleup_jax.integrity.load_npz_checked`, so
  a truncated or altered file is an ``IntegrityError`` naming it.
  """
  npz = json_path.with_suffix('.scores.npz')
  if not npz.is_file():
    raise InputError(f'score file {str(npz)!r} is missing')
  s = integrity.load_npz_checked(npz, 'scores')
  b, p, fooled = s['benign_score'], s['poisoned_score'], s['successful']
  if mode == 'data-limited':
    try:
      saved = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise integrity.IntegrityError(f'{str(json_path)!r} is not readable JSON (truncated or '
                                     f'corrupt): {e}') from None
    cs, form = saved['class_stats'], saved.get('data_limited_form', 'standardised')
    stats = scaleup.ClassStats(np.asarray(cs['mean'], np.float32), np.asarray(cs['std'], np.float32),
                               np.asarray(cs['count']), 0.0, 1.0, cs['min_std'],
                               cs.get('balance', 1.0), cs.get('group_by', 'predicted'))
    b = scaleup.data_limited_scores(b, s['benign_pred'], stats, form)
    p = scaleup.data_limited_scores(p, s['poisoned_pred'], stats, form)
  return b, p[fooled]


def fig2(ctx: Context) -> Outcome:
  """Mean confidence on the original label vs n = 1..11, benign vs poisoned, clean vs attacked.

  Benign images are the attacked model's evaluation images; poisoned images are
  those of a non-target class with the attacked model's trigger (all of them,
  fooled or not), fed to both models.
  """
  o = ctx.opts
  ev = ctx.eval_set(ctx.ckpt)
  sets = {'benign': ev.benign.images, 'poisoned': ev.poisoned_images[: ev.num_poisoned]}
  panels = {'clean model': ctx.clean_ckpt, 'attacked model': ctx.ckpt}
  result = {'factors': list(FIG2_FACTORS), 'models': {}, 'trigger_from': str(ctx.ckpt)}
  for title, path in panels.items():
    if not Path(path).is_dir():
      result['models'][title] = {'skipped': f'no run directory {str(path)!r}'}
      continue
    run = ev.run if Path(path).absolute() == Path(ctx.ckpt).absolute() else ctx.run(path)
    entry = {'ckpt': str(path)}
    _, conf = scaled_confidences(run.apply_fn, run.variables, np.concatenate(list(sets.values())),
                                 FIG2_FACTORS, o.batch_size, o.progress)
    for name, c in _split(conf, {k: len(v) for k, v in sets.items()}).items():
      entry[name] = {'mean': c.mean(0).tolist(), 'std': c.std(0).tolist(), 'count': int(len(c))}
    result['models'][title] = entry
  return Outcome(result, {'sets': list(sets)})


def fig3(ctx: Context) -> Outcome:
  """SPC (default scales) of the benign evaluation images, grouped by true class."""
  ev = ctx.eval_set(ctx.ckpt)
  spc = scaleup.spc_from_labels(slice_label_matrix(ctx.labels(ctx.ckpt)['benign'], ALL_SCALES,
                                                   DEFAULT_SCALES))
  labels, k, target = ev.benign.labels, ev.test.num_classes, ev.run.target
  per_class = {}
  for c in range(k):
    v = spc[labels == c]
    per_class[c] = {'count': int(v.size), 'mean': float(v.mean()) if v.size else None,
                    'std': float(v.std()) if v.size else None,
                    'median': float(np.median(v)) if v.size else None}
  return Outcome({'ckpt': str(ctx.ckpt), 'target': target, 'per_class': per_class},
                 {'spc': spc, 'labels': labels})


def roc(ctx: Context) -> Outcome:
  """ROC curves of SCALE-UP (data-free and data-limited), one per attacked model and mode."""
  if not ctx.attacked:
    raise Skipped('needs attacked models; pass --ckpts')
  result = {'models': {}}
  curves = []  # one (model name, {mode: (fpr, tpr, auroc)}) per attacked model, in order
  for ckpt in ctx.attacked:
    scores = ctx.scaleup_scores(ckpt)
    entry, curve = {}, {}
    for mode, (b, p) in scores.items():
      m = detection_metrics(b, p)
      entry[mode] = {k: m[k] for k in ('auroc', 'tpr@0.01fpr_interp', 'tpr@0.05fpr_interp',
                                       'num_benign', 'num_poisoned')}
      curve[mode] = (*roc_points(b, p), m['auroc'])
    result['models'][Path(ckpt).name] = entry
    curves.append((Path(ckpt).name, curve))
  return Outcome(result, {'curves': curves})


def ablation_scales(ctx: Context) -> Outcome:
  """AUROC vs scale set, every set sliced from one label matrix over :data:`ALL_SCALES`."""
  rows = []
  for subset in SCALE_SETS:
    a = _aurocs(ctx.scaleup_scores(ctx.ckpt, subset))
    rows.append({'scales': list(subset), 'size': len(subset), **a})
  return Outcome({'ckpt': str(ctx.ckpt), 'rows': rows})


def ablation_defense_size(ctx: Context) -> Outcome:
  """Data-limited AUROC vs benign images per class, mean ± std over seeded draws.

  Draws ``m`` images per true class from the defender's images (``m`` at most
  ``num_defense_per_class``; larger sizes are reported as skipped) with
  ``numpy.random.default_rng((seed, draw, m))``. Classes with fewer than two
  images *predicted* in them use the global statistics (``fit_class_stats``).
  """
  o = ctx.opts
  ev = ctx.eval_set(ctx.ckpt)
  pool_labels = ev.test.labels[ev.defense_idx]
  k = ev.test.num_classes
  available = int(min(np.sum(pool_labels == c) for c in range(k)))
  data_free = _aurocs(ctx.scaleup_scores(ctx.ckpt))['data-free']
  rows, skipped = [], []
  for m in o.defense_sizes:
    if m > available:
      skipped.append(m)
      continue
    vals = []
    for draw in o.defense_seeds:
      rng = np.random.default_rng((o.seed, int(draw), int(m)))
      mask = np.zeros(len(pool_labels), bool)
      for c in range(k):
        mask[rng.choice(np.flatnonzero(pool_labels == c), m, replace=False)] = True
      vals.append(_aurocs(ctx.scaleup_scores(ctx.ckpt, defense_mask=mask))['data-limited'])
    rows.append({'per_class': int(m), 'mean': float(np.mean(vals)), 'std': float(np.std(vals)),
                 'aurocs': [float(v) for v in vals]})
  if not rows:
    raise Skipped(f'every defense size {list(o.defense_sizes)} exceeds the {available} defender '
                  'images per class; raise --num_defense_per_class')
  return Outcome({'ckpt': str(ctx.ckpt), 'rows': rows, 'data_free_auroc': data_free,
                  'skipped_sizes': skipped},
                 {'defense_seeds': list(o.defense_seeds), 'available': available})


def ablation_noise(ctx: Context) -> Outcome:
  """Consistency under additive Gaussian noise (``noise_copies`` draws) vs under scaling."""
  o = ctx.opts
  ev = ctx.eval_set(ctx.ckpt)
  run, target, k = ev.run, ev.run.target, ev.test.num_classes
  images = {'benign': ev.benign.images, 'poisoned': ev.poisoned_images[: ev.num_poisoned],
            'defense': ev.test.images[ev.defense_idx]}
  scaling = _aurocs(ctx.scaleup_scores(ctx.ckpt))
  key = jax.random.fold_in(jax.random.key(o.seed), 11)
  lms = noise_label_matrix(run.apply_fn, run.variables, np.concatenate(list(images.values())),
                           o.noise_stds, o.noise_copies, key, o.batch_size, o.progress)
  parts = _split(lms, {n: len(v) for n, v in images.items()})
  rows = []
  for t, std in enumerate(o.noise_stds):
    # The noisy copies play the role of the scales; scored exactly like SPC.
    scores = _consistency_scores({n: v[t] for n, v in parts.items()}, target, k)
    b = parts['benign'][t]
    to_target = float(np.mean(b[b[:, 0] != target, 1:] == target))
    rows.append({'std': float(std), **_aurocs(scores), 'benign_to_target': to_target})
  return Outcome({'ckpt': str(ctx.ckpt), 'noise_copies': o.noise_copies, 'scaling': scaling,
                  'rows': rows})


def _existing(paths, flag: str, what: str) -> list[Path]:
  if not paths:
    raise Skipped(f'needs models: {what} (pass {flag})')
  missing = [str(p) for p in paths if not Path(p).is_dir()]
  if missing:
    raise Skipped(f'needs models: {what}; missing run directories {missing}')
  return [Path(p) for p in paths]


def _patch_size(config):
  """``config.attack_kwargs.size`` (the patch side in pixels), or None where there is none."""
  return (getattr(config, 'attack_kwargs', None) or {}).get('size')


def schedule_name(config, with_size: bool = False) -> str:
  """How a sweep model was trained, as one label: attack, epochs, and crop+flip if off;
  with ``with_size`` also its trigger size where it is not the sweep's base size
  (the poisoning-rate sweep, whose curves each have one trigger)."""
  attack = getattr(config, 'attack', 'badnets')
  epochs = getattr(config, 'num_epochs', None)
  augment = getattr(config, 'augment', True)
  size = _patch_size(config)
  return (f'{attack}, {"?" if epochs is None else int(epochs)} epochs'
          + ('' if augment else ', no crop+flip')
          + (f', {int(size)}x{int(size)} trigger'
             if with_size and size is not None and size != SWEEP_BASE_SIZE else ''))


def _sweep(ctx: Context, paths: list[Path], x_name: str, getter,
           all_poisoned: bool = False, size_in_schedule: bool = False) -> Outcome:
  """SCALE-UP AUROC per model of a sweep; with ``all_poisoned`` also with every
  triggered image as a positive (columns ``'<mode> (all)'``).

  Rows are sorted by training schedule (:func:`schedule_name`: attack, epochs,
  crop+flip, and with ``size_in_schedule`` a trigger size other than the base
  one), then by ``x_name``: models trained on different schedules are
  different curves, never one line. ``extras`` names the columns (``modes``)
  and the schedules in order.
  """
  modes = ['data-free', 'data-limited']
  rows = []
  for p in paths:
    ev = ctx.eval_set(p)
    config = ev.run.config
    epochs = getattr(config, 'num_epochs', None)
    row = {'ckpt': str(p), x_name: getter(config),
           'attack': getattr(config, 'attack', 'badnets'),
           'epochs': None if epochs is None else int(epochs),
           'augment': bool(getattr(config, 'augment', True)),
           'schedule': schedule_name(config, with_size=size_in_schedule),
           'asr': float(np.mean(ctx.labels(p)['poisoned'][:, 0] == ev.run.target))}
    if row['asr'] > 0:
      row.update(_aurocs(ctx.scaleup_scores(p)))
    else:  # the backdoor never took: no successful poisoned image to detect
      row.update({m: float('nan') for m in modes})
    if all_poisoned:
      row.update({f'{m} (all)': v for m, v in
                  _aurocs(ctx.scaleup_scores(p, all_poisoned=True)).items()})
    rows.append(row)
  rows.sort(key=lambda r: (r['attack'] != 'badnets', r['attack'], not r['augment'],
                           r['epochs'] is None, r['epochs'] or 0, r['schedule'], r[x_name]))
  schedules = list(dict.fromkeys(r['schedule'] for r in rows))
  if all_poisoned:
    modes += [f'{m} (all)' for m in modes]
  return Outcome({'rows': rows}, {'x_name': x_name, 'all_poisoned': all_poisoned, 'modes': modes,
                                  'schedules': schedules})


SWEEP_ATTACKS = {'rate': ('badnets',), 'size': ('badnets', 'physical')}  # Fig. 7b, Fig. 7a


def sweep_models(kind: str, sweeps: Path = SWEEPS) -> list[Path]:
  """Finished sweep runs under ``sweeps``: ``kind='rate'`` gives the BadNets
  runs with the sweep's base trigger size, and those below its base rate with
  another size (a stronger trigger for a low-rate point, drawn as its own curve);
  ``kind='size'`` the BadNets and PhysicalBA runs with its base rate
  (:data:`SWEEP_BASE_SIZE`, :data:`SWEEP_BASE_RATE`, the base point of
  ``train/configs/badnets_sweep_resnet20.py``; :data:`SWEEP_ATTACKS`). Only
  single-backdoor runs into :data:`SWEEP_TARGET` count: the multi-label,
  multi-trigger and partial models that share the folder are other recipes."""
  if not Path(sweeps).is_dir():
    return []
  out = []
  for p in compare_lib.zoo_attacked_models(sweeps):
    config = json.loads((p / 'config.json').read_text())
    kwargs = config.get('attack_kwargs') or {}
    size, rate = kwargs.get('size'), config.get('poison_rate', -1)
    if (config.get('attack') not in SWEEP_ATTACKS[kind]
        or config.get('target_label') != SWEEP_TARGET or kwargs.get('extra_targets')
        or config.get('source_classes') or config.get('infected_labels')):
      continue  # not a sweep point: another recipe (several backdoors, partial, other target)
    if kind == 'rate' and (size == SWEEP_BASE_SIZE or rate < SWEEP_BASE_RATE - 1e-9):
      out.append(p)
    elif kind == 'size' and np.isclose(rate, SWEEP_BASE_RATE):
      out.append(p)
  return out


def _sweep_paths(ctx: Context, explicit, kind: str, flag: str, what: str) -> list[Path]:
  """The models of one sweep: ``explicit`` if given, else the finished runs under
  ``zoo/sweeps/`` (none in quick mode); skips the experiment when there are none."""
  paths = explicit or ([] if ctx.opts.quick else sweep_models(kind))
  return _existing(paths, flag, what + ('' if ctx.opts.quick else '; none finished under '
                   f'{_rel(SWEEPS, Path.cwd())}/ (train/configs/badnets_sweep_resnet20.py)'))


def poison_rate(ctx: Context) -> Outcome:
  """SCALE-UP AUROC vs the poisoning rate of the models in ``rate_ckpts``."""
  paths = _sweep_paths(ctx, ctx.opts.rate_ckpts, 'rate', '--rate_ckpts',
                       'attacked models trained at several poisoning rates')
  return _sweep(ctx, paths, 'poison_rate', lambda c: float(c.poison_rate), all_poisoned=True,
                size_in_schedule=True)


def trigger_size(ctx: Context) -> Outcome:
  """SCALE-UP AUROC vs the trigger size (``attack_kwargs.size``) of ``size_ckpts``."""
  paths = _sweep_paths(ctx, ctx.opts.size_ckpts, 'size', '--size_ckpts',
                       'attacked models trained with several trigger sizes')
  return _sweep(ctx, paths, 'trigger_size',
                lambda c: float(c.attack_kwargs.get('size', float('nan'))))


def adaptive(ctx: Context) -> Outcome:
  """The adaptive attack: SCALE-UP AUROC, and ASR under Gaussian noise, vs the BadNets model.

  ASR at noise std ``s`` is the fraction of poisoned (non-target, triggered)
  evaluation images predicted as the target after ``clip(x + s e, 0, 1)``. As a
  control, the same noise is put on the benign evaluation images of the other
  classes (no trigger): the fraction sent to the target is what noise alone
  does. On a model whose trigger is a random-valued patch, strong noise can fire
  the backdoor by itself, and the ASR then says nothing about robustness.
  """
  o = ctx.opts
  ckpt = o.adaptive_ckpt
  if not ckpt and not o.quick and (ADAPTIVE_CKPT / 'metrics.json').is_file():
    ckpt = ADAPTIVE_CKPT
  paths = _existing([ckpt] if ckpt else [], '--adaptive_ckpt',
                    'a model trained with the adaptive attack (train/configs/adaptive_resnet20.py)'
                    + ('' if o.quick else f'; {_rel(ADAPTIVE_CKPT, Path.cwd())} is not finished'))
  models = {'adaptive': paths[0], 'reference': ctx.ckpt}
  result = {'noise_stds': [float(s) for s in o.adaptive_noise_stds], 'models': {}}
  key = jax.random.fold_in(jax.random.key(o.seed), 13)
  for role, path in models.items():
    ev = ctx.eval_set(path)
    run = ev.run
    pois = ev.poisoned_images[: ev.num_poisoned]
    clean = ev.benign.images[ev.benign.labels != run.target]
    lm = noise_label_matrix(run.apply_fn, run.variables, np.concatenate([pois, clean]),
                            o.adaptive_noise_stds, 1, key, o.batch_size, o.progress)  # (T, N, 2)
    hit = lm[:, :, 1] == run.target
    asr = [float(v) for v in np.mean(hit[:, : len(pois)], axis=1)]
    noise_only = [float(v) for v in np.mean(hit[:, len(pois):], axis=1)]
    result['models'][role] = {'ckpt': str(path), 'attack': run.config.attack, 'asr': asr,
                              'benign_to_target': noise_only, 'num_benign': int(len(clean)),
                              **_aurocs(ctx.scaleup_scores(path))}
  result['paper_auroc'] = {'value': PAPER_ADAPTIVE_AUROC[0], 'source': PAPER_ADAPTIVE_AUROC[1]}
  return Outcome(result)


def multi_label_models(sweeps: Path = SWEEPS) -> list[Path]:
  """Finished runs ``sweeps/multi_label_k*`` (train/configs/multi_label_resnet20.py)."""
  if not Path(sweeps).is_dir():
    return []
  return [p for p in compare_lib.zoo_attacked_models(sweeps)
          if p.name.startswith(MULTI_LABEL_PREFIX)]


def multi_label(ctx: Context) -> Outcome:
  """SCALE-UP on models whose backdoors infect several labels (paper App. H, Fig. 10).

  Each backdoor of a model (:func:`scaleup_jax.checkpoint.select_backdoor`) is
  measured on the same benign and defender images: its positives are the
  triggered evaluation images of the other classes that the model sends to its
  label. The row's AUROC pools the positives of every backdoor that formed
  against the one benign set; the per-label AUROCs show the spread. Backdoors
  that never formed (ASR 0) are listed and left out of the pool.
  """
  o = ctx.opts
  explicit = o.multi_label_ckpts
  paths = _existing(explicit or ([] if o.quick else multi_label_models()), '--multi_label_ckpts',
                    'models with several infected labels (train/configs/multi_label_resnet20.py)'
                    + ('' if explicit or o.quick else f'; none finished under '
                       f'{_rel(SWEEPS, Path.cwd())}/{MULTI_LABEL_PREFIX}*'))
  modes = ('data-free', 'data-limited')
  rows = []
  for p in paths:
    ev0, lms = ctx.eval_set(p), ctx.labels(p)
    run = ev0.run
    labels, asr, positives, per_label = [], [], [], {m: [] for m in modes}
    pooled = {m: [] for m in modes}
    for b in range(ckpt_lib.num_backdoors(run)):
      ev = ctx.eval_set(p, b) if b else ev0
      if not np.array_equal(ev.benign.images, ev0.benign.images):
        raise AssertionError(f'{p}: backdoor {b} was given other benign images than backdoor 0')
      pois = lms['poisoned'] if b == 0 else label_matrix(
          run.apply_fn, run.variables, ev.poisoned_images[: ev.num_poisoned], ALL_SCALES,
          o.batch_size, o.progress, f'{Path(p).name} backdoor {b}')
      labels.append(int(ev.run.target))
      asr.append(float(np.mean(pois[:, 0] == ev.run.target)))
      positives.append(int(np.sum(pois[:, 0] == ev.run.target)))
      if asr[-1] == 0:
        for m in modes:
          per_label[m].append(float('nan'))
        continue
      scores = _scores_from_labels({**lms, 'poisoned': pois}, ev.run.target,
                                   ev.test.num_classes, DEFAULT_SCALES)
      for m in modes:
        per_label[m].append(detection_metrics(*scores[m])['auroc'])
        pooled[m].append(scores[m])
    row = {'ckpt': str(p), 'num_infected': len(labels), 'num_classes': int(ev0.test.num_classes),
           'share': len(labels) / ev0.test.num_classes, 'labels': labels, 'asr': asr,
           'num_positives': positives,
           'epochs': int(run.config.num_epochs), 'ba': float(np.mean(lms['benign'][:, 0]
                                                                      == ev0.benign.labels)),
           'per_label': per_label}
    for m in modes:
      if pooled[m]:
        benign = pooled[m][0][0]
        row[m] = detection_metrics(benign, np.concatenate([s[1] for s in pooled[m]]))['auroc']
      else:
        row[m] = float('nan')
    rows.append(row)
  rows.sort(key=lambda r: (r['epochs'], r['num_infected']))
  return Outcome({'rows': rows, 'paper_all_labels_auroc': {
      'value': PAPER_ALL_LABELS_AUROC[0], 'relation': '>=', 'source': PAPER_ALL_LABELS_AUROC[1]}})


def multi_trigger_models(sweeps: Path = SWEEPS) -> list[Path]:
  """Finished runs ``sweeps/multi_trigger_k*`` (train/configs/multi_trigger_resnet20.py),
  after ``sweeps/multi_label_k1``, their one-trigger point (the same recipe), if finished."""
  if not Path(sweeps).is_dir():
    return []
  runs = compare_lib.zoo_attacked_models(sweeps)
  return ([p for p in runs if p.name == f'{MULTI_LABEL_PREFIX}1']
          + [p for p in runs if p.name.startswith(MULTI_TRIGGER_PREFIX)])


def num_triggers(trigger) -> int:
  """How many triggers ``trigger`` stamps in turn (:class:`scaleup_jax.poison.MultiTrigger`)."""
  return len(trigger.triggers) if isinstance(trigger, poison.MultiTrigger) else 1


def trigger_of_each_image(trigger, n: int) -> np.ndarray:
  """``(n,)``: which trigger of ``trigger`` stamps each of ``n`` images poisoned in one
  call (:class:`scaleup_jax.poison.MultiTrigger` cycles, ``i % k``; one trigger: all 0).
  :func:`scaleup_jax.evaluate.build_eval_arrays` poisons its images in one call."""
  return np.arange(n) % num_triggers(trigger)


def multi_trigger(ctx: Context) -> Outcome:
  """SCALE-UP on models whose one target is reached by several triggers (paper App. G, Fig. 9).

  The poisoned evaluation images cycle through a model's triggers
  (:class:`scaleup_jax.poison.MultiTrigger`), so each trigger stamps every
  ``k``-th one. Per trigger: its ASR and the AUROC of its successful images
  against the one benign set; pooled: every successful poisoned image.
  """
  o = ctx.opts
  explicit = o.multi_trigger_ckpts
  paths = _existing(explicit or ([] if o.quick else multi_trigger_models()), '--multi_trigger_ckpts',
                    'models with several triggers for one label '
                    '(train/configs/multi_trigger_resnet20.py)'
                    + ('' if explicit or o.quick else f'; none finished under '
                       f'{_rel(SWEEPS, Path.cwd())}/{MULTI_TRIGGER_PREFIX}*'))
  modes = ('data-free', 'data-limited')
  rows = []
  for p in paths:
    ev, lms = ctx.eval_set(p), ctx.labels(p)
    run = ev.run
    if ev.protocol is not None:  # Context.eval_set sets none; a filter would lose the order
      raise AssertionError(f'{p}: protocol {ev.protocol!r} filters the poisoned images; which '
                           'trigger stamped which is lost')
    which = trigger_of_each_image(run.trigger, ev.num_poisoned)
    k = num_triggers(run.trigger)
    hit = lms['poisoned'][:, 0] == run.target
    scores = _scores_from_labels(lms, run.target, ev.test.num_classes, DEFAULT_SCALES,
                                 all_poisoned=True)  # every triggered image, in order
    row = {'ckpt': str(p), 'num_triggers': k, 'target': int(run.target),
           'epochs': int(run.config.num_epochs),
           'poison_rate': float(run.config.poison_rate),
           'ba': float(np.mean(lms['benign'][:, 0] == ev.benign.labels)),
           'asr': float(np.mean(hit)),
           'asr_per_trigger': [float(np.mean(hit[which == i])) for i in range(k)],
           'num_per_trigger': [int(np.sum(which == i)) for i in range(k)],
           'num_positives_per_trigger': [int(np.sum(hit & (which == i))) for i in range(k)],
           'per_trigger': {m: [] for m in modes}}
    for m in modes:
      benign, pois = scores[m]
      row[m] = detection_metrics(benign, pois[hit])['auroc'] if hit.any() else float('nan')
      for i in range(k):
        sel = hit & (which == i)
        row['per_trigger'][m].append(
            detection_metrics(benign, pois[sel])['auroc'] if sel.any() else float('nan'))
    rows.append(row)
  rows.sort(key=lambda r: (r['epochs'], r['num_triggers']))
  paper = paper_lib.TEXT['multi_trigger_asr']
  return Outcome({'rows': rows, 'paper': {'asr_per_trigger': paper.value, 'relation': paper.relation,
                                          'source': paper.source, 'quote': paper.quote}})


ROBUSTNESS_ATTACKS = ('badnets', 'physical')  # App. L tests these two (robust to noise, Sec. 5.3.3)
PAPER_ROBUSTNESS_CLAIM = ('App. L, Fig. 13 (ResNet-34, Tiny ImageNet; BadNets and PhysicalBA; '
                          'Gaussian noise, failed poisoned samples filtered): "our approach is '
                          'robust against noisy poisoned samples"; the curves are not in the text')


def robustness(ctx: Context) -> Outcome:
  """SCALE-UP on noisy inputs (paper App. L, Fig. 13).

  For every std ``s`` the evaluation images get Gaussian noise,
  ``clip(x + s e, 0, 1)`` (:func:`scaleup_jax.evaluate.add_noise_copies`, key
  ``fold_in(key, t)`` at the ``t``-th std), and SCALE-UP scores them as they
  are: the noisy image is the query, amplified like any other. Two settings, as
  the paper tests benign and poisoned samples apart: ``benign`` (noisy benign
  images against the clean positives) and ``poisoned`` (clean benign images
  against the noisy positives). Positives are the noisy poisoned images the
  model still sends to the target (the paper filters the failed ones); the
  data-limited statistics come from the clean defender images. BA, ASR and the
  share of noisy benign non-target images sent to the target (what noise alone
  does) say which magnitudes keep the paper's condition that BA and ASR hold.

  Models: ``robustness_ckpts``, else those of ``ckpts`` (or ``ckpt``) whose
  attack is in :data:`ROBUSTNESS_ATTACKS`.
  """
  o = ctx.opts
  paths = [Path(p) for p in o.robustness_ckpts] or [
      p for p in ctx.attacked if ctx.run(p).config.attack in ROBUSTNESS_ATTACKS]
  paths = _existing(paths, '--robustness_ckpts', 'BadNets or PhysicalBA models (paper App. L)')
  modes = ('data-free', 'data-limited')
  key = jax.random.fold_in(jax.random.key(o.seed), 17)
  models = []
  for p in paths:
    ev, clean = ctx.eval_set(p), ctx.labels(p)
    run, target, k = ev.run, ev.run.target, ev.test.num_classes
    clean = {n: slice_label_matrix(v, ALL_SCALES, DEFAULT_SCALES) for n, v in clean.items()}
    images = {'benign': ev.benign.images, 'poisoned': ev.poisoned_images[: ev.num_poisoned]}
    others = ev.benign.labels != target
    rows = []
    for t, std in enumerate(o.robustness_stds):
      noisy = {}  # std 0 is the cached clean label matrix; stds >= 0 checked in resolve_options
      for i, (name, x) in enumerate(images.items()):
        noisy[name] = clean[name] if std == 0 else label_matrix(
            run.apply_fn, run.variables, evaluate.add_noise_copies(
                jax.random.fold_in(jax.random.fold_in(key, t), i), x, 1, 'gaussian', float(std)),
            DEFAULT_SCALES, o.batch_size, o.progress, f'{p.name} noise {std:g} {name}')
      row = {'std': float(std),
             'ba': float(np.mean(noisy['benign'][:, 0] == ev.benign.labels)),
             'asr': float(np.mean(noisy['poisoned'][:, 0] == target)),
             'benign_to_target': float(np.mean(noisy['benign'][others, 0] == target)),
             'num_positives': int(np.sum(noisy['poisoned'][:, 0] == target))}
      for setting, lms in (('benign', {**clean, 'benign': noisy['benign']}),
                           ('poisoned', {**clean, 'poisoned': noisy['poisoned']})):
        if setting == 'poisoned' and row['num_positives'] == 0:
          row[setting] = {m: float('nan') for m in modes}
          continue
        row[setting] = _aurocs(_consistency_scores(lms, target, k))
      rows.append(row)
    models.append({'ckpt': str(p), 'attack': run.config.attack, 'target': int(target),
                   'rows': rows})
  return Outcome({'models': models, 'paper_claim': PAPER_ROBUSTNESS_CLAIM})
