"""``eval.diagnose``: load a model and the defender's benign images, diagnose, draw, write."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax

from scaleup_jax import checkpoint as ckpt_lib
from scaleup_jax import data as data_lib
from scaleup_jax import integrity
from scaleup_jax import paths
from scaleup_jax.diagnose import diagnose, plots, report


@dataclasses.dataclass
class DiagnoseOptions:
  ckpt: str | None = None  # None: the zoo's default model
  data_dir: str | None = None
  download: bool | None = None
  num_per_class: int = 50  # benign images per class (the defender's)
  batch_size: int = 256
  seed: int = 0  # the same defender split as eval.detect with the same seed
  out: str | None = None  # directory; None: runs/diagnose/<model name>
  progress: bool = True


def run_diagnosis(opts: DiagnoseOptions, command: str | None = None) -> dict:
  """Diagnoses one run directory; writes diagnose.json, diagnose.md, diagnose.png."""
  from scaleup_jax import evaluate  # the defender split lives there
  ckpt = paths.resolve_ckpt(opts.ckpt) if opts.ckpt else paths.zoo_model(paths.DEFAULT_MODEL)
  run = ckpt_lib.load_run(ckpt)
  cfg = run.config
  data_dir = opts.data_dir or cfg.get('data_dir')
  test = data_lib.load_split(cfg.dataset, 'test', data_dir, download=opts.download)
  defense_idx, _ = evaluate.split_test_set(jax.random.key(opts.seed), test.labels,
                                           test.num_classes, opts.num_per_class, 0)
  names = data_lib.class_names(cfg.dataset, data_dir, test.num_classes)
  t0 = time.perf_counter()
  result = diagnose(run.apply_fn, run.variables, test.images[defense_idx],
                    test.labels[defense_idx], test.num_classes, names,
                    batch_size=opts.batch_size, progress=opts.progress)
  result.update(ckpt=str(ckpt), seed=opts.seed, num_per_class=opts.num_per_class,
                seconds=round(time.perf_counter() - t0, 2))
  out = Path(opts.out) if opts.out else Path('runs') / 'diagnose' / ckpt.name
  out.mkdir(parents=True, exist_ok=True)
  integrity.atomic_write_json(out / 'diagnose.json', result)
  integrity.atomic_write_text(out / 'diagnose.md', report.markdown(result, command))
  plots.plot_diagnosis(result, out / 'diagnose.png')
  result['out'] = str(out)
  return result
