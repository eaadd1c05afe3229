"""Detector comparison: AUROC per attack x detector and throughput, on the zoo models.

``compare(opts)`` evaluates every detector of :data:`scaleup_jax.detectors.NAMES`
on every attacked run directory (by default each zoo model with a trigger),
with the same defender/evaluation split for all detectors of one model
(:func:`scaleup_jax.evaluate.prepare_eval_set`), and writes

    <out>/compare.json     every result (per model, per detector)
    <out>/compare.md       AUROC table (attack x detector) and images/s table
    <out>/auroc.png        the AUROC table as a heat map
    <out>/<model>/<detector>.json   the full per-run results

SCALE-UP contributes two columns, data-free (SPC) and data-limited
(per-class standardised). Positives are the poisoned images the attack fooled,
as in the paper.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from scaleup_jax import detectors, evaluate, integrity
from scaleup_jax.validation import InputError

ZOO = evaluate.ZOO


@dataclasses.dataclass
class CompareOptions:
  """Options of :func:`compare` (the flags of ``eval.compare``)."""

  ckpts: tuple = ()  # run directories; () = every attacked zoo model.
  detectors: tuple = detectors.NAMES
  num_images: int = 1000  # evaluation images per model before poisoning.
  num_defense_per_class: int = 100
  batch_size: int = 256
  seed: int = 0
  protocol: str | None = None  # 'paper': the paper's evaluation sets (evaluate.PROTOCOLS)
  jpeg_match: bool = False  # poisoned test images JPEG re-encoded like the dataset's
  data_dir: str | None = None
  out: str = 'runs/compare'
  progress: bool = True
  command: str = ''  # recorded in the outputs
  merge: bool = False  # keep the other models' rows of an existing <out>/compare.json
  skip_done: bool = False  # with merge: models already in <out>/compare.json are not re-run


def zoo_attacked_models(zoo: Path = ZOO) -> list[Path]:
  """Finished zoo runs (``metrics.json`` written) that carry a trigger, sorted by name."""
  return sorted(p for p in Path(zoo).iterdir()
                if (p / 'trigger.npz').is_file() and (p / 'checkpoints').is_dir()
                and (p / 'metrics.json').is_file())


def compare(opts: CompareOptions) -> dict:
  """Runs the comparison; see the module docstring. Returns the JSON dictionary."""
  names = tuple(detectors.canonical_name(n) for n in opts.detectors)
  if not names:
    raise InputError('no detector to compare')
  ckpts = [Path(c) for c in opts.ckpts] if opts.ckpts else zoo_attacked_models()
  if not ckpts:
    raise InputError(f'no attacked model found under {str(ZOO)!r}; pass --ckpts')
  out = Path(opts.out)
  out.mkdir(parents=True, exist_ok=True)
  settings = {'detectors': list(names), 'num_images': opts.num_images,
              'num_defense_per_class': opts.num_defense_per_class, 'seed': opts.seed,
              'protocol': opts.protocol, 'jpeg_match': opts.jpeg_match}
  old = _stored_summary(out / 'compare.json', settings) if opts.merge else None
  if opts.skip_done and old is not None:
    ckpts = [c for c in ckpts if not _row_done(old, out, c.name, names)]
  results = {}
  t_start = time.time()
  for ckpt in ckpts:
    base = evaluate.DetectOptions(
        ckpt=str(ckpt), data_dir=opts.data_dir, num_images=opts.num_images,
        num_defense_per_class=opts.num_defense_per_class, batch_size=opts.batch_size,
        seed=opts.seed, protocol=opts.protocol, jpeg_match=opts.jpeg_match, plot=False,
        progress=False)
    ev = evaluate.prepare_eval_set(base)
    per_model = {}
    load_start = _load_average()
    bar = tqdm(names, desc=ckpt.name, disable=not opts.progress, dynamic_ncols=True)
    for name in bar:
      bar.set_postfix(detector=name)
      path = out / ckpt.name / f'{name}.json'
      r = _reusable_result(path, ev, base) if opts.skip_done else None
      if r is not None:  # scored by an earlier, stopped run: its load is not known
        r['throughput']['load_average_1min'] = [None, None]
      else:
        r = evaluate.evaluate_detection(dataclasses.replace(base, detector=name, out=str(path)), ev)
      per_model[name] = {k: r[k] for k in ('detection', 'throughput', 'ba', 'asr', 'num_benign',
                                           'num_positives', 'detector_config', 'attack')}
    for r in per_model.values():  # other work on the machine slows every detector of the row
      r['throughput'].setdefault('load_average_1min', [load_start, _load_average()])
    results[ckpt.name] = per_model
    # Written after every model, so a run stopped later keeps the rows it finished
    # (``merge`` + ``skip_done`` resumes it).
    summary = {
        'command': opts.command, 'models': [str(c) for c in ckpts if c.name in results],
        **settings, 'device': jax.devices()[0].device_kind,
        'wall_seconds': round(time.time() - t_start, 1), 'results': dict(results),
        'row_commands': {c.name: opts.command for c in ckpts if c.name in results},
    }
    if old is not None:
      summary = _merge(old, summary)
    integrity.atomic_write_json(out / 'compare.json', summary)
  if not results:  # every model was done already (merge + skip_done)
    summary = old
  integrity.atomic_write_text(out / 'compare.md', markdown_tables(summary))
  plot_auroc(summary, out / 'auroc.png')
  summary['out'] = str(out)
  return summary


def _reusable_result(path: Path, ev: evaluate.EvalSet, base: evaluate.DetectOptions) -> dict | None:
  """A detector's stored result of an interrupted run, if it scored the images of ``ev``.

  Reused (with ``skip_done``) when ``path`` and its checksummed score file exist
  and record the same model, seed, evaluation-set settings and image counts;
  anything else (absent, damaged, other settings) is recomputed.
  """
  try:
    r = json.loads(path.read_text())
    integrity.load_npz_checked(path.with_suffix('.scores.npz'), 'scores')
  except (OSError, ValueError, integrity.IntegrityError):
    return None
  want = {'ckpt': str(ev.run.path), 'seed': base.seed, 'protocol': ev.protocol,
          'jpeg_match': base.jpeg_match, 'num_benign': len(ev.benign_images),
          'num_poisoned_total': len(ev.poisoned_images)}
  if any(r.get(k) != v for k, v in want.items()):
    return None
  if 'num_defense' in r and r['num_defense'] != len(ev.defense_idx):
    return None
  return r


def image_count(num_images: int) -> str:
  """The evaluation images a ``num_images`` setting means (0 = all), as a clause."""
  return (f'{num_images} evaluation images per model (before poisoning)' if num_images else
          'every test image outside the defender set is an evaluation image (before poisoning)')


def protocol_words(summary: dict) -> str:
  """The evaluation sets of a summary's settings, as a clause for captions."""
  words = ('positives are the poisoned images the attack fooled')
  if summary.get('protocol') in evaluate.PAPER_PROTOCOLS:
    p = evaluate.PROTOCOLS[summary['protocol']]
    words = (f"the paper's evaluation sets (Sec. 5.1): the negatives and the successfully "
             f"attacked positives each with {p['noise_copies']} noisy copy "
             f"({p['noise_magnitude']}·U[0,1)), copies that no longer reach the target dropped"
             + ('' if summary['protocol'] == 'paper' else
                f"; {p['num_defense_per_class']} defender images per class"))
  if summary.get('jpeg_match'):
    words += '; poisoned images JPEG re-encoded at the dataset\'s quality (75) before scoring'
  return words


def _load_average() -> float | None:
  """The 1-minute load average (None where the OS has none)."""
  return round(os.getloadavg()[0], 2) if hasattr(os, 'getloadavg') else None


def _stored_summary(path: Path, settings: dict) -> dict | None:
  """The summary at ``path`` (None if absent), checked to have ``settings``.

  Raises:
    InputError: if the stored summary used other settings (detectors, image
      counts, seed), so its rows would not be comparable, or is not JSON.
  """
  if not path.is_file():
    return None
  try:
    old = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise InputError(f'cannot merge into {str(path)!r}: not valid JSON ({e})') from None
  # Summaries written before protocol / jpeg_match existed used their defaults.
  stored = {k: old.get(k, _SETTING_DEFAULTS.get(k)) for k in settings}
  diff = {k: (stored[k], v) for k, v in settings.items() if stored[k] != v}
  if diff:
    raise InputError(f'cannot merge into {str(path)!r}: settings differ (stored, new): {diff}')
  return old


_SETTING_DEFAULTS = {'protocol': None, 'jpeg_match': False}


def _row_done(old: dict, out: Path, model: str, names) -> bool:
  """Whether ``old`` has ``model``'s row for every detector, with its score files on disk."""
  row = old.get('results', {}).get(model, {})
  return all(n in row and (out / model / f'{n}.scores.npz').is_file() for n in names)


def _merge(old: dict, new: dict) -> dict:
  """``new`` plus the rows of the stored summary ``old`` for models ``new`` did not evaluate."""
  results = {m: r for m, r in old['results'].items() if m not in new['results']}
  results.update(new['results'])
  row_commands = {m: old.get('row_commands', {}).get(m, old.get('command', ''))
                  for m in results}
  row_commands.update(new['row_commands'])
  models = [m for m in old['models'] if Path(m).name not in new['results']] + new['models']
  return {**new, 'results': dict(sorted(results.items())), 'models': models,
          'row_commands': row_commands,
          'wall_seconds': old.get('wall_seconds', 0) + new['wall_seconds']}


def columns(names) -> list[tuple[str, str, str]]:
  """``(column title, detector, detection mode)`` for the AUROC table."""
  return [c for n in names for c in detectors.table_columns(n)]


def auroc_matrix(summary: dict):
  """``(row names, column titles, AUROC array (models, columns))``."""
  cols = columns(summary['detectors'])
  rows = list(summary['results'])
  mat = np.full((len(rows), len(cols)), np.nan)
  for i, model in enumerate(rows):
    for j, (_, det, mode) in enumerate(cols):
      m = summary['results'][model].get(det, {}).get('detection', {}).get(mode)
      if m is not None:
        mat[i, j] = m['auroc']
  return rows, [c[0] for c in cols], mat


def markdown_tables(summary: dict) -> str:
  """The AUROC and throughput tables as markdown."""
  rows, titles, mat = auroc_matrix(summary)
  cmds = sorted(set(summary.get('row_commands', {}).values()) - {summary['command']})
  lines = [f"Command: `{summary['command']}`" if summary['command'] else '',
           ('Rows merged from: ' + ', '.join(f'`{c}`' for c in cmds)) if cmds else '', '',
           f"{image_count(summary['num_images']).capitalize()}, "
           f"{summary['num_defense_per_class']} defender images per class, seed {summary['seed']}; "
           f"{protocol_words(summary)}; device: {summary['device']}; "
           f"wall time {summary['wall_seconds']:.0f} s.", '',
           '**AUROC** (higher is better; 0.5 is chance, below 0.5 is inverted)', '',
           '| model | attack | BA | ASR | ' + ' | '.join(titles) + ' |',
           '|---|---|---:|---:|' + '---:|' * len(titles)]
  for i, model in enumerate(rows):
    first = next(iter(summary['results'][model].values()))
    cells = ' | '.join('–' if np.isnan(v) else f'{v:.3f}' for v in mat[i])
    lines.append(f"| {model} | {first['attack']} | {first['ba']:.3f} | {first['asr']:.3f} | {cells} |")
  dets = summary['detectors']
  lines += ['', '**Throughput** (images/s, batch 256, all images of one model; forwards per '
            'image in brackets; the 1-minute load average at the start and end of the row, where '
            'recorded: a load above the core count means other work shared the machine and the '
            "row's speeds are not comparable with the others)", '',
            '| model | ' + ' | '.join(dets) + ' | load |', '|---|' + '---:|' * len(dets) + '---|']
  for model in rows:
    cells, load = [], '–'
    for d in dets:
      t = summary['results'][model].get(d, {}).get('throughput')
      cells.append('–' if t is None else f"{t['images_per_second']:.0f} ({t['forwards_per_image']})")
      if t is not None and t.get('load_average_1min') and None not in t['load_average_1min']:
        load = ' → '.join(f'{v:.1f}' for v in t['load_average_1min'])
    lines.append(f'| {model} | ' + ' | '.join(cells) + f' | {load} |')
  return '\n'.join(lines).lstrip() + '\n'


def plot_auroc(summary: dict, path: Path) -> Path:
  """Heat map of the AUROC table."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  rows, titles, mat = auroc_matrix(summary)
  fig, ax = plt.subplots(figsize=(1.1 * len(titles) + 2.5, 0.6 * len(rows) + 2.2))
  im = ax.imshow(mat, vmin=0, vmax=1, cmap='RdYlGn', aspect='auto')
  ax.set_xticks(range(len(titles)), titles, rotation=35, ha='right', fontsize=8)
  ax.set_yticks(range(len(rows)), rows, fontsize=8)
  for i in range(len(rows)):
    for j in range(len(titles)):
      if not np.isnan(mat[i, j]):
        ax.text(j, i, f'{mat[i, j]:.2f}', ha='center', va='center', fontsize=8)
  fig.colorbar(im, ax=ax, label='AUROC')
  ax.set_title('Input-level backdoor detection: AUROC per model and detector')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
