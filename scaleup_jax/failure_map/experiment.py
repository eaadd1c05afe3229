"""The failure map's numbers: one record per backdoored model, plain JSON-able dicts.

For each run directory :func:`evaluate_model` measures

* what the model is: trigger pattern, target, poisoning rate, epochs, patch
  size (``config.json``; the ``failure_map`` entry of the failure-map runs, else
  inferred from the attack and its ``attack_kwargs``);
* how SCALE-UP does on it, through :func:`scaleup_jax.evaluate.evaluate_detection`
  (nothing rescored here): BA, ASR, AUROC of the data-free and data-limited
  modes, the TPR at a threshold calibrated to 5% FPR on the defender's images
  (with its exact interval) for both modes, and the best label-only score of
  the operating-point table;
* why (the mechanism), from the label matrices of the same images under
  ``×n`` amplification: the mean SPC (and the share at SPC = 1) of successful
  poisoned images, of benign images whose true class is the target, of those
  predicted as the target, and of the other benign images; where the amplified
  benign and poisoned images go (share predicted as each class at each ``n``,
  :func:`scaleup_jax.diagnose.sink_shares`); how much of the trigger's
  perturbation is left after clipping (:func:`trigger_kept`); and the model's
  sink classes from the defender's benign images alone
  (:func:`scaleup_jax.diagnose.summarise_scale_set`), with whether the target
  is one of them.

:func:`run` evaluates a list of models and rewrites ``failure_map.json``
atomically after every model, so an interrupted run keeps its finished rows;
:mod:`.plots` draws and :mod:`.report` writes from that JSON.

References:
  Guo et al., "SCALE-UP", ICLR 2023. Reported failures on CIFAR-10 BadNets:
  BackdoorBox issues #75 and #84, JunfengGo/SCALE-UP issue #5 (see
  :data:`scaleup_jax.failure_map.report.REPORTED`).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from scaleup_jax import integrity, scaleup
from scaleup_jax.validation import InputError

RESULTS = 'failure_map.json'
# The map's recipe (train/configs/failure_map_resnet20.py; a test checks they agree).
PATTERNS = ('random', 'white', 'black', 'checkerboard', 'blend')
PATCH_PATTERNS = PATTERNS[:4]
RECIPE = {'model': 'resnet20', 'num_epochs': 5, 'poison_rate': 0.1, 'size': 5,
          'blend_alpha': 0.2, 'corner': 'bottom_right', 'seed': 0}
FAILURE_MAP_DIR = 'zoo/failure_map'
# The map cells that live outside zoo/failure_map/ (same recipe, same seed), and the
# other BadNets models it is compared with.
EXTRA_MODELS = ('zoo/sweeps/badnets_rate0.1_size5', 'zoo/cifar10_badnets_resnet20',
                'zoo/v2/cifar10_badnets_resnet20')
ALPHA = '0.05'  # the FPR budget of the map's TPR
LABEL_SCORES = ('data-free', 'data-limited', 'survival', 'spc_sat', 'class_rank')


@dataclasses.dataclass(frozen=True)
class FailureMapConfig:
  """Settings of :func:`run` (the same for every model of one ``failure_map.json``).

  Attributes:
    num_images: evaluation images per model before poisoning (0 = all 9,000
      not held by the defender); the poisoned ones are those of a class other
      than the target.
    num_defense_per_class: the defender's benign images per class (data-limited
      statistics, calibration of the 5%-FPR thresholds, the sink classes).
    seed: the split and the tie coins (as ``eval.detect``).
    batch_size: images per compiled call.
    scales: SCALE-UP's amplification factors.
  """

  num_images: int = 2000
  num_defense_per_class: int = 100
  seed: int = 0
  batch_size: int = 256
  scales: tuple = scaleup.DEFAULT_SCALES

  def validate(self) -> None:
    if self.num_images < 0 or self.num_defense_per_class < 2:
      raise InputError(f'num_images must be >= 0 and num_defense_per_class >= 2; got '
                       f'{self.num_images}, {self.num_defense_per_class}')
    if self.batch_size < 1:
      raise InputError(f'batch_size must be >= 1, got {self.batch_size}')
    scaleup.check_factors(self.scales)

  def record(self) -> dict:
    return {k: [float(s) for s in v] if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()}


# ---------------------------------------------------------------------------
# What a run is


def describe_run(cfg: dict) -> dict:
  """Pattern, target, rate, epochs, size and whether it is on the map's recipe.

  Args:
    cfg: a run's ``config.json`` as a dict.

  Returns:
    ``{'attack', 'pattern', 'target', 'rate', 'epochs', 'size', 'alpha',
    'on_recipe', 'variant'}``; ``variant`` is the heatmap row: the pattern for a
    model trained with the map's recipe, else the pattern with what differs
    (e.g. ``'random 3x3, 24 ep'``).

  Example:
    >>> describe_run({'attack': 'badnets', 'attack_kwargs': {'size': 3, 'pattern': 'random'},
    ...               'target_label': 0, 'poison_rate': 0.1, 'num_epochs': 24})['variant']
    'random 3x3, 24 ep'
  """
  attack = cfg.get('attack')
  kw = dict(cfg.get('attack_kwargs') or {})
  fm = cfg.get('failure_map') or {}
  if fm.get('pattern'):
    pattern = fm['pattern']
  elif attack == 'badnets':
    pattern = kw.get('pattern', 'random')
  elif attack == 'blended':
    pattern = 'blend'
  else:
    pattern = str(attack)
  target = int(cfg['target_label'])
  rate = float(cfg.get('poison_rate', 0.0))
  epochs = int(cfg.get('num_epochs', 0))
  size = int(kw.get('size', 3)) if pattern in PATCH_PATTERNS else None
  alpha = float(kw['alpha']) if pattern == 'blend' and 'alpha' in kw else None
  differs = []
  if pattern in PATCH_PATTERNS:
    if size != RECIPE['size']:
      differs.append(f'{size}x{size}')
    if kw.get('corner', RECIPE['corner']) != RECIPE['corner']:
      differs.append(str(kw.get('corner')))
  elif pattern == 'blend':
    if alpha != RECIPE['blend_alpha']:
      differs.append(f'alpha {alpha:g}' if alpha is not None else 'alpha ?')
  else:
    differs.append('not a map attack')
  if abs(rate - RECIPE['poison_rate']) > 1e-9:
    differs.append(f'rate {rate:g}')
  if epochs != RECIPE['num_epochs']:
    differs.append(f'{epochs} ep')
  if cfg.get('model', RECIPE['model']) != RECIPE['model']:
    differs.append(str(cfg.get('model')))
  if int(cfg.get('seed', 0)) != RECIPE['seed']:
    differs.append(f"seed {cfg.get('seed')}")
  if cfg.get('source_classes'):
    differs.append('source-specific')
  return {'attack': attack, 'pattern': pattern, 'target': target, 'rate': rate, 'epochs': epochs,
          'size': size, 'alpha': alpha, 'on_recipe': not differs,
          'variant': pattern if not differs else f"{pattern} {', '.join(differs)}"}


def train_command(model: str, cfg: dict, metrics: dict | None) -> str | None:
  """The command that trained ``model``.

  Failure-map runs: the config's own form
  (``failure_map_resnet20.py:pattern=P,target=K`` plus any rate/size/epochs
  override) with ``--workdir model``; other runs: the ``command`` their
  ``metrics.json`` recorded.
  """
  fm = cfg.get('failure_map') or {}
  if fm.get('pattern'):
    d = describe_run(cfg)
    arg = f"pattern={fm['pattern']},target={int(fm['target'])}"
    if abs(d['rate'] - RECIPE['poison_rate']) > 1e-9:
      arg += f",rate={d['rate']:g}"
    if d['size'] is not None and d['size'] != RECIPE['size']:
      arg += f",size={d['size']}"
    quick = cfg.get('model') == 'tiny' and bool(cfg.get('max_train_examples'))
    if d['epochs'] != RECIPE['num_epochs'] and not quick:
      arg += f",epochs={d['epochs']}"
    if quick:  # the configs' ':quick' (tests): tiny model, 1 epoch, a few images
      arg += ',quick'
    return (f'python -m train.main --config train/configs/failure_map_resnet20.py:{arg} '
            f'--workdir {model} --config.progress=False')
  return (metrics or {}).get('command')


# ---------------------------------------------------------------------------
# The mechanism (pure numpy on label matrices; hand-checked in the tests)


def spc_by_group(spc, groups: dict) -> dict:
  """Mean SPC, share at SPC = 1 and count of each group of images.

  Args:
    spc: ``(N,)`` SPC values.
    groups: ``{name: bool mask (N,)}``.

  Returns:
    ``{name: {'mean', 'at_one', 'count'}}``; an empty group has ``None`` mean
    and share.

  Example:
    >>> spc_by_group(np.array([1.0, 0.5, 0.0]), {'a': np.array([True, True, False])})
    {'a': {'mean': 0.75, 'at_one': 0.5, 'count': 2}}
  """
  spc = np.asarray(spc, np.float64)
  out = {}
  for name, mask in groups.items():
    mask = np.asarray(mask, bool)
    if mask.shape != spc.shape:
      raise InputError(f'group {name!r} has mask shape {mask.shape}, SPC has {spc.shape}')
    s = spc[mask]
    out[name] = {'mean': float(s.mean()) if s.size else None,
                 'at_one': float(np.mean(s >= 1.0)) if s.size else None, 'count': int(s.size)}
  return out


def where_images_go(labels, num_classes: int, scales: Sequence[float], target: int,
                    sinks: Iterable[int] = ()) -> dict:
  """Where ``×n``-amplified images are sent: per factor, the share predicted as each class.

  Args:
    labels: ``(N, 1 + S)`` label matrix (column 0 unscaled, then ``scales``).
    num_classes: ``K``.
    scales: the ``S`` factors.
    target: the backdoor's target class.
    sinks: the model's sink classes (:func:`scaleup_jax.diagnose.sink_classes`).

  Returns:
    ``{'factors': [1, *scales], 'count', 'shares' (1 + S, K), 'to_target' (1 + S,),
    'to_sinks' (1 + S,), 'top_class' (1 + S,), 'top_share' (1 + S,)}``; all
    ``None`` but ``factors`` when there are no images.

  Example:
    >>> where_images_go(np.array([[1, 0], [2, 0]]), 3, (11,), 1)['to_target']
    [0.5, 0.0]
  """
  from scaleup_jax import diagnose
  factors = [1.0] + [float(s) for s in scales]
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.shape[1] != len(factors):
    raise InputError(f'labels must have shape (N, {len(factors)}) for scales {list(scales)}; '
                     f'got {labels.shape}')
  if labels.shape[0] == 0:
    return {'factors': factors, 'count': 0, 'shares': None, 'to_target': None, 'to_sinks': None,
            'top_class': None, 'top_share': None}
  shares = diagnose.sink_shares(labels, num_classes)
  sinks = sorted({int(k) for k in sinks})
  return {'factors': factors, 'count': int(labels.shape[0]), 'shares': shares.tolist(),
          'to_target': shares[:, target].tolist(),
          'to_sinks': shares[:, sinks].sum(axis=1).tolist() if sinks else [0.0] * len(factors),
          'top_class': [int(k) for k in shares.argmax(axis=1)],
          'top_share': [float(v) for v in shares.max(axis=1)]}


def trigger_kept(poisoned, clean, scales: Sequence[float]) -> dict:
  """How much of the trigger's perturbation survives amplification and clipping.

  ``kept(n) = sum |clip(n x') - clip(n x)| / sum |x' - x|`` over the image pairs
  (poisoned ``x'``, its clean source ``x``): 1 at ``n = 1``; near 0 when
  amplification maps trigger and clean pixels to the same values (a white patch
  over pixels that saturate to white anyway); above 1 when it widens the gap (a
  black patch stays 0 while its surroundings go to 1).

  Args:
    poisoned: ``(P, H, W, C)`` poisoned images in [0, 1].
    clean: ``(P, H, W, C)`` their clean sources.
    scales: the factors.

  Returns:
    ``{'factors': [...], 'kept': [...]}`` (``kept`` None when the trigger changes nothing).

  Example:
    >>> x = np.full((1, 1, 2, 1), 0.5); xp = x.copy(); xp[0, 0, 0, 0] = 1.0
    >>> trigger_kept(xp, x, (3,))['kept']
    [0.0]
  """
  p = np.asarray(poisoned, np.float32)
  c = np.asarray(clean, np.float32)
  if p.shape != c.shape:
    raise InputError(f'poisoned {p.shape} and clean {c.shape} images differ in shape')
  base = float(np.abs(p - c).sum(dtype=np.float64))
  factors = [float(s) for s in scales]
  if base == 0.0 or p.size == 0:
    return {'factors': factors, 'kept': None}
  kept = [float(np.abs(np.clip(n * p, 0, 1) - np.clip(n * c, 0, 1)).sum(dtype=np.float64) / base)
          for n in factors]
  return {'factors': factors, 'kept': kept}


def mechanism(benign_lm, benign_true, poisoned_lm, target: int, num_classes: int,
              scales: Sequence[float], sinks: Iterable[int] = ()) -> dict:
  """SPC by group and where amplified images go, from the evaluation's label matrices.

  Args:
    benign_lm: ``(Nb, 1 + S)`` label matrix of the benign evaluation images.
    benign_true: ``(Nb,)`` their true labels.
    poisoned_lm: ``(Np, 1 + S)`` label matrix of the poisoned images (sources
      of a class other than the target).
    target: the target class.
    num_classes: ``K``.
    scales: the factors of the label matrices.
    sinks: the model's sink classes.

  Returns:
    ``{'spc': spc_by_group(...) over 'poisoned_successful', 'poisoned_all',
    'benign_all', 'benign_target_true', 'benign_target_pred', 'benign_other';
    'goes_to': {'benign', 'benign_target_true', 'poisoned_successful'}:
    where_images_go(...)}``. Successful = called the target unscaled.
  """
  b = np.asarray(benign_lm)
  p = np.asarray(poisoned_lm)
  y = np.asarray(benign_true)
  if y.shape != (len(b),):
    raise InputError(f'benign_true must have shape ({len(b)},), got {y.shape}')
  spc_b = np.asarray(scaleup.spc_from_labels(b)) if len(b) else np.zeros(0)
  spc_p = np.asarray(scaleup.spc_from_labels(p)) if len(p) else np.zeros(0)
  hit = p[:, 0] == target if len(p) else np.zeros(0, bool)
  groups_b = {'benign_all': np.ones(len(b), bool), 'benign_target_true': y == target,
              'benign_target_pred': b[:, 0] == target if len(b) else np.zeros(0, bool),
              'benign_other': y != target}
  spc = {**spc_by_group(spc_p, {'poisoned_successful': hit, 'poisoned_all': np.ones(len(p), bool)}),
         **spc_by_group(spc_b, groups_b)}
  goes = {'benign': where_images_go(b, num_classes, scales, target, sinks),
          'benign_target_true': where_images_go(b[y == target], num_classes, scales, target, sinks),
          'poisoned_successful': where_images_go(p[hit], num_classes, scales, target, sinks)}
  return {'spc': spc, 'goes_to': goes}


# ---------------------------------------------------------------------------
# One model


def resolve_model(model: str) -> Path:
  """The run directory of ``model`` (a path, or ``zoo/NAME`` found in the zoo)."""
  from scaleup_jax import paths
  p = paths.resolve_ckpt(model)
  if not p.is_dir():
    raise InputError(f'model directory {model!r} does not exist')
  if not (p / 'config.json').is_file():
    raise InputError(f'{model!r} is not a run directory (no config.json)')
  return p


def is_finished(path: Path) -> bool:
  """A run is finished when its ``metrics.json`` exists (written once training ends)."""
  return (Path(path) / 'metrics.json').is_file()


def _operating(res: dict, name: str) -> dict | None:
  entry = (res.get('operating_points') or {}).get(name)
  if not entry or ALPHA not in entry['alphas']:
    return None
  op = entry['alphas'][ALPHA]
  return {'tpr': op['tpr']['rate'], 'tpr_interval': list(op['tpr']['interval']),
          'fpr': op['fpr']['rate'], 'fpr_interval': list(op['fpr']['interval']),
          'auroc': entry['auroc'], 'label': entry['label'], 'reading': op.get('reading'),
          'within_sampling_error': op.get('within_sampling_error')}


def best_score(res: dict) -> dict | None:
  """The label-only score with the highest calibrated TPR at 5% FPR (ties: higher AUROC).

  Among the scores whose realised FPR is within sampling error of the budget
  (``within_sampling_error``), when there are any: a score that flags more
  benign images than it was calibrated for does not win by it.
  """
  cands = [(n, _operating(res, n)) for n in (res.get('operating_points') or {})]
  cands = [(n, o) for n, o in cands if o is not None]
  if not cands:
    return None
  ok = [(n, o) for n, o in cands if o.get('within_sampling_error') is not False]
  cands = ok or cands
  name, op = max(cands, key=lambda c: (c[1]['tpr'], c[1]['auroc']))
  return {'name': name, **op}


def evaluate_model(ckpt: str, config: FailureMapConfig | None = None,
                   progress: bool = False) -> dict[str, Any]:
  """One row of the map: what the model is, how SCALE-UP does, and why.

  Args:
    ckpt: a run directory (finished: with ``metrics.json``).
    config: the settings (default :class:`FailureMapConfig`).
    progress: progress bars.

  Returns:
    A JSON-able dict; see the module docstring. ``positives`` says which
    poisoned images the AUROC and TPR were measured on (the successful ones;
    all of them, and said so, when none succeeds).
  """
  from scaleup_jax import data as data_lib
  from scaleup_jax import diagnose, evaluate
  config = config or FailureMapConfig()
  config.validate()
  path = resolve_model(ckpt)
  cfg = json.loads((path / 'config.json').read_text())
  metrics = json.loads((path / 'metrics.json').read_text()) if is_finished(path) else None
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    opts = evaluate.DetectOptions(
        ckpt=str(path), num_images=config.num_images,
        num_defense_per_class=config.num_defense_per_class, batch_size=config.batch_size,
        scales=tuple(float(s) for s in config.scales), alphas=(float(ALPHA),), seed=config.seed,
        out=str(Path(tmp) / 'detect.json'), plot=False, progress=progress)
    ev = evaluate.prepare_eval_set(opts)
    try:
      res = evaluate.evaluate_detection(opts, ev)
      positives = 'successful poisoned'
    except InputError as e:
      if 'ASR = 0' not in str(e):
        raise
      opts = dataclasses.replace(opts, keep_all_poisoned=True)
      res = evaluate.evaluate_detection(opts, ev)
      positives = 'all poisoned (ASR = 0: no successful one)'
    eval_scores = integrity.load_npz_checked(Path(res['json_path']).with_suffix('.scores.npz'),
                                             'scores')
  run = ev.run
  target = int(run.target)
  num_classes = ev.test.num_classes
  scales = tuple(float(s) for s in config.scales)
  # The label matrices of the same images, for the mechanism.
  lm = lambda x: diagnose.label_matrix(run.apply_fn, run.variables, x, scales, config.batch_size,
                                       progress)
  b_lm, p_lm, d_lm = lm(ev.benign_images), lm(ev.poisoned_images), lm(ev.test.images[ev.defense_idx])
  d_labels = ev.test.labels[ev.defense_idx]
  defender = diagnose.summarise_scale_set(d_lm, d_labels, num_classes)
  sinks = [int(k) for k in defender['sinks']]
  mech = mechanism(b_lm, ev.benign.labels, p_lm, target, num_classes, scales, sinks)
  clean_src = ev.benign.images[ev.benign.labels != target]
  hit = p_lm[:, 0] == target
  mech['trigger_kept'] = trigger_kept(ev.poisoned_images[hit] if hit.any() else ev.poisoned_images,
                                      clean_src[hit] if hit.any() else clean_src, scales)
  # Same images and model as evaluate's scores: its data-free SPC must be ours.
  spc_b = np.asarray(scaleup.spc_from_labels(b_lm))
  agree = float(np.mean(np.abs(spc_b - np.asarray(eval_scores['benign_score'])) < 1e-6))
  if agree < 0.99:
    warnings.warn(f'{ckpt}: the mechanism SPC agrees with evaluate_detection on only '
                  f'{agree:.1%} of benign images', stacklevel=2)
  sat = scaleup.saturation_label(run.apply_fn, run.variables, ev.benign.images.shape[1:])
  names = data_lib.class_names(run.config.dataset, run.config.get('data_dir'), num_classes)
  desc = describe_run(cfg)
  det = res['detection']
  record = {
      'ckpt': str(ckpt), **desc, 'target_name': names[target],
      'train_command': train_command(str(ckpt), cfg, metrics),
      'train_metrics': {k: metrics.get(k) for k in ('ba', 'asr')} if metrics else None,
      'ba': res['ba'], 'asr': res['asr'],
      'num_benign': res['num_benign'], 'num_positives': res['num_positives'],
      'num_defense': res.get('num_defense'), 'positives': positives,
      'auroc': {m: det[m]['auroc'] for m in ('data-free', 'data-limited') if m in det},
      'tpr_at_5fpr': {m: _operating(res, m) for m in ('data-free', 'data-limited')},
      'best_score': best_score(res),
      'scores': {n: _operating(res, n) for n in (res.get('operating_points') or {})},
      'mechanism': mech,
      'sinks': sinks, 'sink_names': [names[k] for k in sinks],
      'sink': sinks[0] if sinks else None,
      'target_is_sink': target in sinks,
      'saturation_label': int(sat), 'saturation_name': names[int(sat)],
      'defender': {'num_images': int(len(d_lm)), 'sink_shares': defender['sink_shares'],
                   'benign_spc_by_true_class': defender['by_true_class']['mean'],
                   'fpr_at_spc_one': defender['fpr_at_spc_one']},
      'spc_agreement_with_evaluate': agree,
      'class_names': names,
      'runtime_s': time.perf_counter() - t0,
  }
  return record


# ---------------------------------------------------------------------------
# Many models


def default_models(root: str | Path = '.') -> tuple[list[str], list[str]]:
  """Every run directory under ``zoo/failure_map/`` plus :data:`EXTRA_MODELS` that exist.

  Returns:
    ``(finished, unfinished)``: paths relative to ``root`` as strings.
  """
  root = Path(root)
  found = sorted(str(p.relative_to(root)) for p in (root / FAILURE_MAP_DIR).glob('*')
                 if p.is_dir() and (p / 'config.json').is_file()) if (root / FAILURE_MAP_DIR).is_dir() else []
  found += [m for m in EXTRA_MODELS if (root / m / 'config.json').is_file()]
  finished = [m for m in found if is_finished(root / m)]
  return finished, [m for m in found if m not in finished]


def check_models(models: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits requested models into finished and unfinished; a missing or clean one raises."""
  finished, unfinished = [], []
  for m in models:
    p = resolve_model(m)
    if not (p / 'trigger.npz').is_file():
      raise InputError(f'{m!r} is a clean model (no trigger.npz): it has no place on the failure map')
    (finished if is_finished(p) else unfinished).append(m)
  return finished, unfinished


def eval_command(model: str, out_dir: str | None, config: FailureMapConfig) -> str:
  """The command that (re)evaluates one model into an existing map."""
  cmd = f'python -m eval.failure_map --models {model}'
  if out_dir:
    cmd += f' --out {out_dir}'
  defaults = FailureMapConfig()
  for f in ('num_images', 'num_defense_per_class', 'seed', 'batch_size'):
    if getattr(config, f) != getattr(defaults, f):
      cmd += f' --{f} {getattr(config, f)}'
  return cmd + ' --merge'


def load_results(path: str | Path) -> dict[str, Any]:
  """Reads a ``failure_map.json`` (or the one in a directory)."""
  return integrity.read_results(path, RESULTS, 'failure-map', 'python -m eval.failure_map')


def run(models: Sequence[str], out_dir: str | None, config: FailureMapConfig | None = None,
        merge: bool = False, progress: bool = True, command: str | None = None,
        figures: bool = True, doc: str | None = None) -> dict[str, Any]:
  """Evaluates every model; writes ``failure_map.json`` after each, then the figures and report.

  Args:
    models: run directories (finished).
    out_dir: output directory (created); None writes nothing.
    config: the settings (default :class:`FailureMapConfig`).
    merge: keep the models of an existing ``out_dir/failure_map.json`` that
      this run does not evaluate (re-evaluated ones are replaced); its settings
      must equal this run's.
    progress: progress bars (one per model over the models, and evaluate's).
    command: the command line recorded in the outputs.
    figures: also draw the PNGs.
    doc: also write the report there (e.g. ``docs/failure_map.md``), with links
      to the figures relative to it and its hand-written section kept.

  Returns:
    ``{'config', 'commands', 'models': {name: record}, 'runtime_s'}``.
  """
  from tqdm.auto import tqdm
  config = config or FailureMapConfig()
  config.validate()
  if not models:
    raise InputError('no models to evaluate')
  start = time.perf_counter()
  results = {'config': config.record(), 'commands': [command] if command else [], 'models': {}}
  path = Path(out_dir) / RESULTS if out_dir else None
  if merge and path is not None and path.is_file():
    old = load_results(path)
    mismatch = {k: (old['config'].get(k), v) for k, v in results['config'].items()
                if old['config'].get(k) != v}
    if mismatch:
      raise InputError(f'cannot merge into {str(path)!r}: settings differ (old, new) {mismatch}')
    results['models'] = dict(old['models'])
    results['commands'] = [c for c in old.get('commands', []) if c] + results['commands']
  for model in tqdm(list(models), desc='failure map', unit='model', disable=not progress):
    rec = evaluate_model(model, config, progress)
    rec['eval_command'] = eval_command(model, out_dir, config)
    results['models'].pop(model, None)
    results['models'][model] = rec
    results['runtime_s'] = time.perf_counter() - start
    if path is not None:
      integrity.atomic_write_json(path, results)
  results['runtime_s'] = time.perf_counter() - start
  if out_dir:
    write_outputs(results, out_dir, figures, doc)
  return results


def write_outputs(results: dict[str, Any], out_dir: str, figures: bool = True,
                  doc: str | None = None) -> list[str]:
  """``failure_map.json``, ``failure_map.md`` and (with ``figures``) the PNGs; ``doc`` too."""
  import os
  from scaleup_jax.failure_map import report
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  integrity.atomic_write_json(out / RESULTS, results)
  written = [str(out / RESULTS)]
  images = []
  if figures:
    from scaleup_jax.failure_map import plots
    images = plots.write_figures(results, str(out))
    written += images
  md = out / 'failure_map.md'
  integrity.atomic_write_text(md, report.markdown(results, image_dir='.',
                                                  previous=md.read_text() if md.is_file() else None))
  written.append(str(md))
  if doc:
    d = Path(doc)
    rel = os.path.relpath(out, d.parent if str(d.parent) else '.')
    integrity.atomic_write_text(d, report.markdown(results, image_dir=rel,
                                                   previous=d.read_text() if d.is_file() else None))
    written.append(str(d))
  return written


# ---------------------------------------------------------------------------
# The map's grid (shared by the heatmaps and the report)

# name -> (title, how to read it from a record)
METRICS = {
    'auroc_data_free': ('AUROC, data-free', lambda r: (r.get('auroc') or {}).get('data-free')),
    'auroc_data_limited': ('AUROC, data-limited',
                           lambda r: (r.get('auroc') or {}).get('data-limited')),
    'tpr_data_free': ('TPR at 5% FPR, data-free (calibrated)',
                      lambda r: ((r.get('tpr_at_5fpr') or {}).get('data-free') or {}).get('tpr')),
    'tpr_data_limited': ('TPR at 5% FPR, data-limited (calibrated)',
                         lambda r: ((r.get('tpr_at_5fpr') or {}).get('data-limited') or {}).get('tpr')),
}


def map_grid(results: dict[str, Any]) -> dict[str, Any]:
  """Rows (pattern variants), columns (targets) and the model of each cell.

  Rows: the five map patterns always (cells without a model stay empty), then
  every off-recipe variant present. Columns: every target present. A cell
  holds the first model of ``results['models']`` with that variant and target;
  the others of the same cell are listed in ``duplicates``.

  Returns:
    ``{'rows', 'cols', 'cells': {(row, col): model}, 'duplicates': [model, ...]}``.
  """
  models = results['models']
  extra = sorted({r['variant'] for r in models.values() if r['variant'] not in PATTERNS})
  rows = list(PATTERNS) + extra
  cols = sorted({int(r['target']) for r in models.values()})
  cells, dups = {}, []
  for name, r in models.items():
    key = (r['variant'], int(r['target']))
    if key in cells:
      dups.append(name)
    else:
      cells[key] = name
  return {'rows': rows, 'cols': cols, 'cells': cells, 'duplicates': dups}


def metric_matrix(results: dict[str, Any], metric: str) -> np.ndarray:
  """``(rows, cols)`` float matrix of one :data:`METRICS` entry over :func:`map_grid`; NaN = no model."""
  g = map_grid(results)
  fn = METRICS[metric][1]
  m = np.full((len(g['rows']), len(g['cols'])), np.nan)
  for (row, col), name in g['cells'].items():
    v = fn(results['models'][name])
    if v is not None:
      m[g['rows'].index(row), g['cols'].index(col)] = v
  return m
