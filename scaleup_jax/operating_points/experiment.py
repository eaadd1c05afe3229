"""Calibrated operating points of every label-only score on zoo models.

For each model, :func:`run_operating_points` runs one
:func:`scaleup_jax.evaluate.evaluate_detection` with a label matrix on the
union of the paper's scales and :data:`scaleup_jax.scaleup.DENSE_SCALES`
(so every score is read from the same queries), calibrates each score's
threshold on the defender's benign images for each budget
(:mod:`scaleup_jax.calibration`, conformal rule by default) and measures the
realised false- and true-positive rates on the held-out evaluation images.
Results are written as ``operating_points.json`` with a figure
(:mod:`~scaleup_jax.operating_points.plots`) and ``operating_points.md``
(:mod:`~scaleup_jax.operating_points.report`).

References:
  Guo et al., "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection
  via Analyzing Scaled Prediction Consistency", ICLR 2023.
  https://arxiv.org/abs/2302.03251
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from scaleup_jax import evaluate, integrity, paths, scaleup
from scaleup_jax.validation import InputError

# The target-0 zoo models the issue names, then zoo v2 (targets drawn away from the
# saturation class) where trained.
TARGET0_MODELS = ('cifar10_badnets_resnet20', 'cifar10_wanet_resnet20',
                  'cifar10_physical_resnet20', 'cifar10_issba_resnet20')
V2_MODELS = ('v2/cifar10_badnets_resnet20',)
CURVE_ALPHAS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)
RESULTS = 'operating_points.json'


@dataclasses.dataclass(frozen=True)
class OperatingPointsConfig:
  """Settings of :func:`run_operating_points`.

  Attributes:
    models: zoo model names (``'v2/...'`` allowed) or run directories.
    num_images: evaluation images per model (0 = all 9,000 not held by the
      defender).
    num_defense_per_class: defender images per class (calibration; the
      fitted scores fit on half of them, see
      :func:`scaleup_jax.evaluate.fit_calibration_split`).
    alphas: the budgets of the table.
    curve_alphas: the budgets of the TPR-against-budget curve.
    dense_scales: the denser grid of the finer scores.
    rule: :data:`scaleup_jax.calibration.RULES`.
    seed: split, coins.
    batch_size: images per compiled call.
  """

  models: tuple = TARGET0_MODELS
  num_images: int = 2000
  num_defense_per_class: int = 100
  alphas: tuple = (0.01, 0.05, 0.1)
  curve_alphas: tuple = CURVE_ALPHAS
  dense_scales: tuple = scaleup.DENSE_SCALES
  rule: str = 'conformal'
  seed: int = 0
  batch_size: int = 256

  def validate(self) -> None:
    if not self.models:
      raise InputError('no models to evaluate')
    if self.num_images < 0 or self.num_defense_per_class < 1:
      raise InputError(f'num_images must be >= 0 and num_defense_per_class >= 1; got '
                       f'{self.num_images}, {self.num_defense_per_class}')


def default_models(zoo: str | None = None) -> tuple:
  """:data:`TARGET0_MODELS` plus the :data:`V2_MODELS` whose training finished (``metrics.json``)."""
  root = paths.zoo_dir(zoo, required=False) or Path('zoo')
  v2 = tuple(m for m in V2_MODELS if (root / m / 'metrics.json').is_file())
  return TARGET0_MODELS + v2


def _resolve(model: str, zoo: str | None) -> Path:
  p = Path(model)
  if p.is_dir() and (p / 'config.json').is_file():
    return p
  return paths.zoo_model(model, zoo)


def evaluate_model(model: str, config: OperatingPointsConfig, zoo: str | None = None,
                   progress: bool = False) -> dict[str, Any]:
  """One model's record: BA, ASR, sizes, AUROCs and every score's operating points."""
  ckpt = _resolve(model, zoo)
  with tempfile.TemporaryDirectory() as tmp:
    opts = evaluate.DetectOptions(
        ckpt=str(ckpt), num_images=config.num_images,
        num_defense_per_class=config.num_defense_per_class, batch_size=config.batch_size,
        alphas=tuple(config.alphas), curve_alphas=tuple(config.curve_alphas),
        dense_scales=tuple(config.dense_scales), calibration_rule=config.rule, seed=config.seed,
        out=str(Path(tmp) / 'detect.json'), plot=False, progress=progress)
    res = evaluate.evaluate_detection(opts)
  keep = ('attack', 'model', 'target_label', 'ba', 'asr', 'num_benign', 'num_positives',
          'positives', 'num_defense', 'scales', 'detection', 'operating_points', 'calibration')
  out = {k: res.get(k) for k in keep}
  out['ckpt'] = str(model)
  out['throughput'] = {k: res['throughput'][k] for k in ('images_per_second', 'forwards_per_image',
                                                          'seconds')}
  return out


def run_operating_points(out_dir: str | None, config: OperatingPointsConfig | None = None,
                         zoo: str | None = None, merge: bool = False, progress: bool = True,
                         figures: bool = True, command: str | None = None) -> dict[str, Any]:
  """Evaluates every model of ``config``; writes JSON, figure and Markdown to ``out_dir``.

  Args:
    out_dir: output directory (created); None writes nothing.
    config: the settings (default :class:`OperatingPointsConfig`).
    zoo: zoo directory (default: :func:`scaleup_jax.paths.zoo_dir`).
    merge: keep the models of an existing ``out_dir/operating_points.json``
      that this run does not evaluate (to add a model later, e.g. zoo v2); its
      settings must equal this run's.
    progress: show progress bars.
    figures: also write the PNG.
    command: the command line recorded in the outputs.

  Returns:
    ``{'config', 'command', 'models': {name: record}, 'runtime_s'}``; the file
    is rewritten after each model, so an interrupted run keeps what it did.

  Example:
    >>> cfg = OperatingPointsConfig(models=('cifar10_badnets_resnet20',), num_images=200,
    ...                             num_defense_per_class=20)
    >>> res = run_operating_points('/tmp/op', cfg)
    >>> res['models']['cifar10_badnets_resnet20']['operating_points']['data-free']['alphas']['0.05']['tpr']
  """
  config = config or OperatingPointsConfig()
  config.validate()
  start = time.perf_counter()
  cfg_record = {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(config).items()}
  results = {'config': cfg_record, 'command': command, 'models': {}}
  path = Path(out_dir) / RESULTS if out_dir else None
  if merge and path is not None and path.is_file():
    old = json.loads(path.read_text())
    mismatch = {k: (old['config'].get(k), v) for k, v in cfg_record.items()
                if k != 'models' and old['config'].get(k) != v}
    if mismatch:
      raise InputError(f'cannot merge into {str(path)!r}: settings differ {mismatch}')
    results['models'] = dict(old['models'])
    results['config']['models'] = list(dict.fromkeys([*old['config']['models'], *config.models]))
    results['command'] = '; '.join(c for c in (old.get('command'), command) if c)
  for model in config.models:
    t0 = time.perf_counter()
    results['models'][model] = evaluate_model(model, config, zoo, progress)
    results['models'][model]['runtime_s'] = time.perf_counter() - t0
    results['runtime_s'] = time.perf_counter() - start
    if path is not None:
      integrity.atomic_write_json(path, results)
  if out_dir:
    write_outputs(results, out_dir, figures)
  return results


def write_outputs(results: dict[str, Any], out_dir: str, figures: bool = True) -> list[str]:
  """Writes ``operating_points.json``, ``operating_points.md`` and (with ``figures``) the PNG."""
  from scaleup_jax import calibration
  from scaleup_jax.operating_points import report
  for rec in results['models'].values():  # readings in this code's words
    for entry in rec['operating_points'].values():
      for op in entry['alphas'].values():
        op['reading'] = calibration.reading(op)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  integrity.atomic_write_json(out / RESULTS, results)
  written = [str(out / RESULTS)]
  if figures:
    from scaleup_jax.operating_points import plots
    written += plots.write_figures(results, str(out))
  integrity.atomic_write_text(out / 'operating_points.md', report.markdown(results))
  written.append(str(out / 'operating_points.md'))
  return written


def load_results(path: str | Path) -> dict[str, Any]:
  """Reads an ``operating_points.json``."""
  return integrity.read_results(path, RESULTS, 'operating-point', 'python -m eval.operating_points')


def models_in(results: dict[str, Any]) -> Sequence[str]:
  return list(results['models'])
