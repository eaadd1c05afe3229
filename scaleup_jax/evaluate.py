"""End-to-end evaluation of an input-level detector on a trained (backdoored) model.

``evaluate_detection(opts)`` loads a run directory, splits the test set into a
defender's benign set (``num_defense_per_class`` images per class, used by the
data-limited mode and by the baselines that need benign images) and disjoint
evaluation images, stamps the run's trigger on every evaluation image whose
true label is not the target, scores everything with one compiled detector
(SCALE-UP by default, or any of :data:`scaleup_jax.detectors.NAMES`) and
reports BA, ASR, AUROC and TPR at 1%/5% FPR (for SCALE-UP: data-free SPC and
data-limited scores), plus throughput. Results go to JSON (and a PNG of the
score distributions and ROC).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from scaleup_jax import checkpoint as ckpt_lib
from scaleup_jax import data as data_lib
from scaleup_jax import detectors
from scaleup_jax import poison
from scaleup_jax import scaleup
from scaleup_jax.metrics import detection_metrics, roc_points
from scaleup_jax.validation import InputError

ZOO = Path(__file__).resolve().parents[1] / 'zoo'
DEFAULT_CKPT = ZOO / 'cifar10_badnets_resnet20'
MODES = ('data-free', 'data-limited', 'both')


@dataclasses.dataclass
class DetectOptions:
  """Options of :func:`evaluate_detection` (the flags of ``eval.detect``)."""

  ckpt: str | None = None  # None: the zoo BadNets ResNet-20.
  data_dir: str | None = None
  download: bool = False  # let tfds download CIFAR-10 if absent (network needed)
  num_images: int = 0  # evaluation images before poisoning; 0 = all remaining.
  num_defense_per_class: int = 100
  batch_size: int = 256
  scales: tuple = scaleup.DEFAULT_SCALES
  mode: str = 'both'
  method: str = 'auto'  # 'vmap', 'map' or 'auto' (scaleup.resolve_method)
  detector: str = 'scaleup'  # or a baseline of scaleup_jax.detectors.NAMES
  detector_options: dict = dataclasses.field(default_factory=dict)
  keep_all_poisoned: bool = False
  noise_copies: int = 0
  noise_std: float = 0.05
  seed: int = 0
  out: str | None = None  # JSON path; None: runs/detect/<ckpt name>/detect.json
  plot: bool = True
  progress: bool = True


def parse_options(items) -> dict:
  """``['num_overlays=50', 'xi=0.6']`` -> ``{'num_overlays': 50, 'xi': 0.6}``.

  Values are parsed as Python literals where possible (numbers, tuples,
  booleans) and kept as strings otherwise.
  """
  import ast
  out = {}
  for item in items:
    key, sep, value = str(item).partition('=')
    if not sep or not key.strip():
      raise InputError(f'detector option {item!r} is not key=value')
    try:
      out[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      out[key.strip()] = value.strip()
  return out


def split_test_set(key, labels, num_classes, num_defense_per_class, num_images):
  """Disjoint index sets: the defender's benign images and the evaluation images.

  Returns:
    ``(defense_idx, eval_idx)``: ``num_defense_per_class`` indices per class
    (fewer if a class has fewer images) and up to ``num_images`` (0 = all)
    of the remaining ones, both in a key-determined random order.
  """
  perm = np.asarray(jax.random.permutation(key, len(labels)))
  defense = []
  for k in range(num_classes):
    defense.extend(perm[labels[perm] == k][:num_defense_per_class])
  defense = np.asarray(sorted(defense), np.int64)
  rest = perm[~np.isin(perm, defense)]
  if num_images:
    rest = rest[:num_images]
  return defense, rest


def add_noise_copies(key, images, copies: int, std: float):
  """``copies`` Gaussian-noised versions of ``images`` (clipped to [0, 1]).

  Returns ``(copies * N, H, W, C)``, ordered copy-major.
  """
  noise = np.asarray(jax.random.normal(key, (copies, *images.shape)), np.float32)
  return np.clip(images[None] + std * noise, 0.0, 1.0).reshape(-1, *images.shape[1:])


@dataclasses.dataclass
class EvalSet:
  """The images one evaluation scores (see :func:`prepare_eval_set`)."""

  run: ckpt_lib.LoadedRun
  test: data_lib.ImageDataset
  defense_idx: np.ndarray  # indices into ``test`` held by the defender
  benign: data_lib.ImageDataset  # evaluation images (clean)
  benign_images: np.ndarray  # plus noise copies, if any
  poisoned_images: np.ndarray  # triggered non-target evaluation images, plus noise copies
  num_poisoned: int  # poisoned images before noise copies

  @property
  def defense(self) -> data_lib.ImageDataset:
    return self.test.take(self.defense_idx)


def _check_options(opts: DetectOptions) -> None:
  if opts.mode not in MODES:
    raise InputError(f'unknown mode {opts.mode!r}; expected one of {MODES}')
  if opts.batch_size < 1:
    raise InputError(f'batch_size must be >= 1, got {opts.batch_size}')
  if opts.noise_copies < 0 or opts.noise_std < 0:
    raise InputError(f'noise_copies and noise_std must be >= 0; got {opts.noise_copies}, {opts.noise_std}')
  scaleup.resolve_method(opts.method, opts.batch_size)  # an unknown method fails here
  name = detectors.canonical_name(opts.detector)
  if name != 'scaleup' and opts.mode == 'data-limited':
    raise InputError(f"--mode data-limited is SCALE-UP's; detector {name!r} has one score")


def prepare_eval_set(opts: DetectOptions) -> EvalSet:
  """Loads the run and its test set and splits it into defender and evaluation images.

  The split and the noise depend only on ``opts.seed`` (and the sizes), so
  every detector evaluated with the same options sees the same images.
  """
  _check_options(opts)
  ckpt = Path(opts.ckpt) if opts.ckpt else DEFAULT_CKPT
  run = ckpt_lib.load_run(ckpt)
  if run.trigger is None:
    raise InputError(f'{str(ckpt)!r} is a clean model (no trigger.npz): there is no poisoned test set to detect')
  cfg = run.config
  test = data_lib.load_split(cfg.dataset, 'test', opts.data_dir or cfg.get('data_dir'),
                            download=opts.download)

  k_split, k_noise_b, k_noise_p = jax.random.split(jax.random.key(opts.seed), 3)
  defense_idx, eval_idx = split_test_set(k_split, test.labels, test.num_classes,
                                         opts.num_defense_per_class, opts.num_images)
  if len(eval_idx) == 0:
    raise InputError('no evaluation images left after the defender set; lower --num_defense_per_class')
  benign = test.take(eval_idx)
  pois_images, _, _ = poison.poisoned_test_set(
      benign.images, benign.labels, run.trigger, run.target)
  num_poisoned = len(pois_images)
  benign_images = benign.images
  if opts.noise_copies:
    benign_images = np.concatenate(
        [benign_images, add_noise_copies(k_noise_b, benign.images, opts.noise_copies, opts.noise_std)])
    pois_images = np.concatenate(
        [pois_images, add_noise_copies(k_noise_p, pois_images, opts.noise_copies, opts.noise_std)])
  return EvalSet(run, test, defense_idx, benign, benign_images, np.asarray(pois_images, np.float32),
                 num_poisoned)


def _build_detector(opts: DetectOptions, ev: EvalSet, scales):
  """``(detect(images) -> (preds, scores), forwards_per_image, config)`` for ``opts.detector``."""
  name = detectors.canonical_name(opts.detector)
  if name == 'scaleup':
    method = scaleup.resolve_method(opts.method, opts.batch_size)
    det = scaleup.make_detector(ev.run.apply_fn, scales, method)
    return (lambda x: det(ev.run.variables, x)), 1 + len(scales), {
        'scales': [float(s) for s in scales], 'method': method}
  options = dict(opts.detector_options)
  defense = ev.defense
  det = detectors.make(name, ev.run.apply_fn, ev.run.variables,
                       key=jax.random.fold_in(jax.random.key(opts.seed), 7),
                       benign_images=defense.images if len(defense) else None,
                       benign_labels=defense.labels if len(defense) else None, **options)
  return (lambda x: det(ev.run.variables, x)), det.forwards_per_image, det.config


def evaluate_detection(opts: DetectOptions, eval_set: EvalSet | None = None) -> dict:
  """Runs a detector on a run directory's test set; see the module docstring.

  Args:
    opts: the options (``opts.detector`` picks SCALE-UP or a baseline).
    eval_set: images from :func:`prepare_eval_set` with the same options, to
      share loading across detectors; built here if None.

  Returns:
    The result dictionary that is also written to JSON.
  """
  _check_options(opts)
  name = detectors.canonical_name(opts.detector)
  scales = scaleup.check_scales(opts.scales)
  ev = eval_set if eval_set is not None else prepare_eval_set(opts)
  run, benign, shape = ev.run, ev.benign, ev.benign.images.shape[1:]
  ckpt, cfg = run.path, run.config
  t0 = time.perf_counter()
  detect, forwards, det_config = _build_detector(opts, ev, scales)
  build_s = time.perf_counter() - t0
  run_batches = lambda images, desc: scaleup.detect_batched(
      detect, images, opts.batch_size, None, shape, opts.progress, desc)

  t0 = time.perf_counter()
  warm = ev.benign_images
  warm = warm[: opts.batch_size] if len(warm) >= opts.batch_size else np.resize(
      warm, (opts.batch_size, *shape))
  jax.block_until_ready(detect(warm))
  compile_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  b_pred, b_score = run_batches(ev.benign_images, 'benign')
  p_pred, p_score = run_batches(ev.poisoned_images, 'poisoned')
  seconds = time.perf_counter() - t0
  n_scored = len(ev.benign_images) + len(ev.poisoned_images)

  ba = float(np.mean(b_pred[: len(benign)] == benign.labels))
  success = p_pred == run.target
  asr = float(np.mean(success[: ev.num_poisoned]))
  keep = np.ones_like(success) if opts.keep_all_poisoned else success
  if not keep.any():
    raise InputError('no poisoned image is classified as the target (ASR = 0); '
                     'pass --keep_all_poisoned to score them anyway')

  result = {
      'ckpt': str(ckpt), 'attack': cfg.attack, 'model': cfg.model, 'detector': name,
      'detector_config': det_config, 'target_label': run.target,
      'scales': [float(s) for s in scales] if name == 'scaleup' else None,
      'method': det_config['method'] if name == 'scaleup' else None, 'seed': opts.seed, 'ba': ba,
      'asr': asr, 'num_benign': int(len(ev.benign_images)),
      'num_poisoned_total': int(len(ev.poisoned_images)),
      'positives': 'all poisoned' if opts.keep_all_poisoned else 'successfully attacked poisoned',
      'num_positives': int(keep.sum()), 'noise_copies': opts.noise_copies,
      'noise_std': opts.noise_std if opts.noise_copies else None,
      'detection': {},
      'throughput': {'images_per_second': n_scored / seconds, 'seconds': seconds,
                     'images': n_scored, 'batch_size': opts.batch_size,
                     'forwards_per_image': forwards, 'compile_seconds': compile_s,
                     'build_seconds': build_s, 'device': jax.devices()[0].device_kind},
  }
  if name != 'scaleup':
    scores = {name: (b_score, p_score[keep])}
  else:
    b_spc, p_spc = b_score, p_score
    scores = {'data-free': (b_spc, p_spc[keep])}
    if opts.mode in ('data-limited', 'both'):
      if len(ev.defense_idx) == 0:
        raise InputError('data-limited mode needs defender images; --num_defense_per_class is 0')
      d_pred, d_spc = run_batches(ev.test.images[ev.defense_idx], 'defender')
      stats = scaleup.fit_class_stats(d_spc, d_pred, ev.test.num_classes, num_scales=len(scales))
      scores['data-limited'] = (scaleup.data_limited_scores(b_spc, b_pred, stats),
                                scaleup.data_limited_scores(p_spc, p_pred, stats)[keep])
      scores['data-limited-global'] = (scaleup.global_scores(b_spc, stats),
                                       scaleup.global_scores(p_spc, stats)[keep])
      result['num_defense'] = int(len(ev.defense_idx))
      result['class_stats'] = {'mean': stats.mean.tolist(), 'std': stats.std.tolist(),
                               'count': stats.count.tolist(), 'min_std': stats.min_std}
    if opts.mode == 'data-limited':
      scores.pop('data-free')
  for mode_name, (b, p) in scores.items():
    result['detection'][mode_name] = detection_metrics(b, p)

  default_name = 'detect.json' if name == 'scaleup' else f'detect_{name}.json'
  out = Path(opts.out) if opts.out else Path('runs/detect') / ckpt.name / default_name
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  np.savez_compressed(out.with_suffix('.scores.npz'), benign_score=b_score, benign_pred=b_pred,
                      poisoned_score=p_score, poisoned_pred=p_pred, successful=success)
  result['json_path'] = str(out)
  if opts.plot:
    title = ckpt.name if name == 'scaleup' else f'{ckpt.name} ({name})'
    result['plot_path'] = str(plot_scores(scores, out.with_suffix('.png'), title,
                                          'SCALE-UP' if name == 'scaleup' else name))
  return result


def plot_scores(scores: dict, path: Path, title: str, detector: str = 'SCALE-UP') -> Path:
  """Histogram of benign vs poisoned scores per mode and their ROC curves."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  names = list(scores)
  fig, axes = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 3.4))
  for ax, name in zip(axes, names):
    b, p = scores[name]
    bins = np.linspace(min(b.min(), p.min()), max(b.max(), p.max()) + 1e-6, 25)
    ax.hist(b, bins, alpha=0.6, density=True, label='benign')
    ax.hist(p, bins, alpha=0.6, density=True, label='poisoned')
    ax.set_title(name)
    ax.set_xlabel('score')
    ax.legend()
  roc = axes[-1]
  for name in names:
    fpr, tpr = roc_points(*scores[name])
    roc.plot(fpr, tpr, label=name)
  roc.plot([0, 1], [0, 1], 'k:', lw=0.8)
  roc.set_xlabel('false-positive rate')
  roc.set_ylabel('true-positive rate')
  roc.set_title('ROC')
  roc.legend(fontsize=8)
  fig.suptitle(f'{detector} on {title}')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def format_summary(result: dict) -> str:
  """A short human-readable table of a result dictionary."""
  lines = [f"model {result['ckpt']}   detector {result.get('detector', 'scaleup')}",
           f"BA {result['ba']:.4f}   ASR {result['asr']:.4f}   "
           f"benign {result['num_benign']}  positives {result['num_positives']} "
           f"({result['positives']})",
           f"{'mode':<22}{'AUROC':>8}{'TPR@1%':>9}{'TPR@5%':>9}   (ROC-interpolated: @1%  @5%)"]
  for name, m in result['detection'].items():
    lines.append(f"{name:<22}{m['auroc']:>8.4f}{m['tpr@0.01fpr']:>9.4f}{m['tpr@0.05fpr']:>9.4f}"
                 f"{m['tpr@0.01fpr_interp']:>24.4f}{m['tpr@0.05fpr_interp']:>7.4f}")
  t = result['throughput']
  lines.append(f"throughput {t['images_per_second']:.1f} images/s "
               f"(batch {t['batch_size']}, {t['forwards_per_image']} forwards each, "
               f"compile {t['compile_seconds']:.1f}s, {t['device']})")
  lines.append(f"wrote {result['json_path']}")
  return '\n'.join(lines)
