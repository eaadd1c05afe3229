"""Markdown and JSON of :mod:`scaleup_jax.reproduce`: one table per experiment, ``summary.md``, ``reproduce.json``.

One function per experiment, ``f(record, extras) -> list[str]`` (the table's
markdown lines), from the experiment's :class:`~.experiments.Outcome`; nothing
here touches a model. :func:`write_table` puts the title and command above the
lines; :func:`write_summary` writes ``reproduce.json`` and ``summary.md``.

Example:
  >>> paper = {'m': {'SCALE-UP (data-free)': {'paper': 0.918, 'ours': 0.906, 'diff': -0.012}}}
  >>> paper_table_lines(paper, {'m': 'wanet'}, ['SCALE-UP (data-free)'])[-1]
  '| m | wanet | 0.906 / 0.918 (-0.012) |'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from scaleup_jax import compare as compare_lib
from scaleup_jax import integrity
from scaleup_jax.reproduce.experiments import ALL_SCALES, DEFAULT_SCALES, FIG2_FACTORS, PAPER_ADAPTIVE_AUROC


def _fmt(v) -> str:
  return '–' if v is None or (isinstance(v, float) and np.isnan(v)) else f'{v:.3f}'


def write_table(out: Path, name: str, title: str, command: str, lines: list[str]) -> str:
  """Writes ``out/<name>.md``: ``# title``, the command if any, then ``lines``.

  Returns:
    The file's name (for the links of ``summary.md``).
  """
  path = Path(out) / f'{name}.md'
  head = [f'# {title}', '']
  if command:
    head += [f'Command: `{command}`', '']
  integrity.atomic_write_text(path, '\n'.join(head + lines).rstrip() + '\n')
  return path.name


def table1(record: dict, extras: dict) -> list[str]:
  """AUROC [bootstrap interval] per model and detector, BA, ASR, and the paper beside ours."""
  rows, titles, intervals, paper = record['models'], record['columns'], record['auroc'], record['paper']
  attacks = extras['attacks']
  lines = [f"{compare_lib.image_count(extras['num_images']).capitalize()}, "
           f"{extras['num_defense_per_class']} defender images per class, seed {extras['seed']}; "
           f"{extras.get('protocol_words', 'positives are the poisoned images the attack fooled')}. "
           'Cells: AUROC '
           f"[{extras['num_bootstrap']}-resample percentile-bootstrap 95% interval; benign and "
           f'positive scores resampled independently].', '',
           '| model | attack | BA | ASR | ' + ' | '.join(titles) + ' |',
           '|---|---|---:|---:|' + '---:|' * len(titles)]
  for model in rows:
    cells = []
    for title in titles:
      ci = intervals[model].get(title)
      cells.append('–' if ci is None else f"{ci['auroc']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]")
    lines.append(f"| {model} | {attacks[model]} | {extras['ba'][model]:.3f} | "
                 f"{extras['asr'][model]:.3f} | " + ' | '.join(cells) + ' |')
  lines += ['', '## Side by side with the paper', '', record['paper_note'], '']
  lines += paper_table_lines(paper, attacks, [t for t in titles if any(t in r for r in paper.values())])
  lines += ['', f"Raw comparison (throughput too): [{extras['compare_md']}]({extras['compare_md']})."]
  return lines


def paper_table_lines(paper: dict, attacks: dict, titles: Sequence[str]) -> list[str]:
  """Markdown rows ``ours / paper (diff)`` of :func:`~.experiments.paper_side_by_side`'s result.

  Models without any cell in the paper (e.g. the adaptive attack) get no row.
  """
  lines = ['| model | attack | ' + ' | '.join(titles) + ' |', '|---|---|' + '---:|' * len(titles)]
  for model, row in paper.items():
    if not row:
      continue
    cells = []
    for title in titles:
      c = row.get(title)
      if c is None:
        cells.append('–')
      elif c['ours'] is None:
        cells.append(f"– / {c['paper']:.3f}")
      else:
        cells.append(f"{c['ours']:.3f} / {c['paper']:.3f} ({c['diff']:+.3f})")
    lines.append(f'| {model} | {attacks[model]} | ' + ' | '.join(cells) + ' |')
  return lines


def fig2(record: dict, extras: dict) -> list[str]:
  """Mean confidence per model, image set and factor."""
  lines = ['Mean (± std, shaded in the figure and clipped to [0, 1]) softmax probability of '
           'the label predicted at n = 1, on clip(n x, 0, 1). Poisoned images carry the '
           f"attacked model's trigger (`{Path(record['trigger_from']).name}`) for both models.", '',
           '| model | images | ' + ' | '.join(f'n={n:g}' for n in FIG2_FACTORS) + ' |',
           '|---|---|' + '---:|' * len(FIG2_FACTORS)]
  for title, entry in record['models'].items():
    if 'skipped' in entry:
      lines.append(f"| {title} | skipped: {entry['skipped']} |")
      continue
    for name in extras['sets']:
      lines.append(f'| {title} | {name} | ' + ' | '.join(_fmt(v) for v in entry[name]['mean']) + ' |')
  return lines


def fig3(record: dict, extras: dict) -> list[str]:
  """SPC statistics of the benign images per true class."""
  target = record['target']
  lines = [f"Benign evaluation images of `{Path(record['ckpt']).name}`, SPC with S = "
           f'{{{", ".join(f"{s:g}" for s in DEFAULT_SCALES)}}}; target class {target}.', '',
           '| true class | images | mean SPC | std | median |', '|---|---:|---:|---:|---:|']
  for c, r in record['per_class'].items():
    name = f'**{c} (target)**' if c == target else str(c)
    lines.append(f"| {name} | {r['count']} | {_fmt(r['mean'])} | {_fmt(r['std'])} | {_fmt(r['median'])} |")
  return lines


def roc(record: dict, extras: dict) -> list[str]:
  """AUROC and TPR at 1% and 5% FPR per model and mode."""
  lines = ['SCALE-UP, S = {3, 5, 7, 9, 11}; TPRs read off the ROC curve (interpolated).', '',
           '| model | mode | AUROC | TPR@1% FPR | TPR@5% FPR | benign | positives |',
           '|---|---|---:|---:|---:|---:|---:|']
  for model, entry in record['models'].items():
    for mode, m in entry.items():
      lines.append(f"| {model} | {mode} | {m['auroc']:.3f} | {m['tpr@0.01fpr_interp']:.3f} | "
                   f"{m['tpr@0.05fpr_interp']:.3f} | {m['num_benign']} | {m['num_poisoned']} |")
  return lines


def ablation_scales(record: dict, extras: dict) -> list[str]:
  """AUROC per mode and scale set."""
  lines = [f"`{Path(record['ckpt']).name}`; one label matrix over S = "
           f'{{{", ".join(f"{s:g}" for s in ALL_SCALES)}}}, '
           'sliced per set.', '', '| S | size | AUROC data-free | AUROC data-limited |',
           '|---|---:|---:|---:|']
  for r in record['rows']:
    lines.append(f"| {{{', '.join(f'{s:g}' for s in r['scales'])}}} | {r['size']} | "
                 f"{r['data-free']:.3f} | {r['data-limited']:.3f} |")
  return lines


def ablation_defense_size(record: dict, extras: dict) -> list[str]:
  """Data-limited AUROC (mean, std over draws) per defender size, and the sizes skipped."""
  seeds, data_free, skipped = extras['defense_seeds'], record['data_free_auroc'], record['skipped_sizes']
  lines = [f"`{Path(record['ckpt']).name}`, S = {{3, 5, 7, 9, 11}}; {len(seeds)} draws per size "
           f'(seeds {seeds}); data-free AUROC {data_free:.3f}.', '',
           '| images per class | AUROC mean | std |', '|---:|---:|---:|']
  lines += [f"| {r['per_class']} | {r['mean']:.3f} | {r['std']:.3f} |" for r in record['rows']]
  if skipped:
    lines += ['', f"Skipped sizes {skipped}: more than the {extras['available']} defender images "
              'per class.']
  return lines


def ablation_noise(record: dict, extras: dict) -> list[str]:
  """AUROC under scaling and under each noise std, and how often noise alone hits the target."""
  scaling = record['scaling']
  lines = [f"`{Path(record['ckpt']).name}`. Consistency = fraction of {record['noise_copies']} "
           'noisy queries clip(x + std e, 0, 1), e ~ N(0, I), with the unperturbed prediction; '
           'scored and standardised exactly as SPC. Last column: fraction of the noisy queries of '
           'benign images not predicted as the target that the model sends to the target (noise '
           'firing the backdoor by itself).', '',
           '| perturbation | AUROC data-free | AUROC data-limited | benign queries to target |',
           '|---|---:|---:|---:|',
           f"| scaling, S = {{3, 5, 7, 9, 11}} | {scaling['data-free']:.3f} | "
           f"{scaling['data-limited']:.3f} | – |"]
  lines += [f"| Gaussian noise, std {r['std']:g} | {r['data-free']:.3f} | {r['data-limited']:.3f} | "
            f"{r['benign_to_target']:.3f} |" for r in record['rows']]
  return lines


def sweep(record: dict, extras: dict) -> list[str]:
  """ASR and AUROC per model of a sweep, grouped by training schedule."""
  rows, x_name, modes = record['rows'], extras['x_name'], extras['modes']
  head = ''.join(f' AUROC {m} |' for m in modes)
  lines = []
  if extras['all_poisoned']:
    lines += ['Positives: the poisoned test images the model sends to the target (successful), '
              'and, in the "(all)" columns, every triggered non-target test image.', '']
  lines += [f'| model | {x_name} | schedule | ASR |{head}', '|---|---:|---|---:|' + '---:|' * len(modes)]
  lines += [f"| {Path(r['ckpt']).name} | {r[x_name]:g} | {r['schedule']} "
            f"| {r['asr']:.3f} |" + ''.join(f' {_fmt(r[m])} |' for m in modes) for r in rows]
  if any(np.isnan(r[modes[0]]) for r in rows):
    lines += ['', '–: the model sends no poisoned image to the target (ASR 0), so there is no '
              'successful poisoned image to detect.']
  if len(extras['schedules']) > 1:
    by = ('attack, epochs, crop+flip' + ('' if x_name == 'trigger_size' else
                                         ', and a trigger size other than the sweep\'s base one'))
    lines += ['', f'Rows are grouped by training schedule ({by}); compare points within a '
              'schedule. A longer schedule, one without crop+flip, or a larger trigger is used '
              'where the backdoor did not form in the short one.']
  return lines


def adaptive(record: dict, extras: dict) -> list[str]:
  """AUROC and ASR / noise-alone rates per noise std, adaptive vs reference model."""
  stds = record['noise_stds']
  lines = ['ASR@s: triggered non-target images sent to the target after Gaussian noise of std s; '
           'noise@s: the same noise on benign non-target images without a trigger (the rate '
           'noise alone sends to the target).', '',
           '| model | attack | AUROC data-free | AUROC data-limited | '
           + ' | '.join(f'ASR@{s:g}' for s in stds) + ' | '
           + ' | '.join(f'noise@{s:g}' for s in stds) + ' |',
           '|---|---|---:|---:|' + '---:|' * (2 * len(stds))]
  for role, r in record['models'].items():
    lines.append(f"| {role}: {Path(r['ckpt']).name} | {r['attack']} | {r['data-free']:.3f} | "
                 f"{r['data-limited']:.3f} | " + ' | '.join(f'{a:.3f}' for a in r['asr']) + ' | '
                 + ' | '.join(f'{a:.3f}' for a in r['benign_to_target']) + ' |')
  lines += ['', f'Paper: SCALE-UP AUROC {PAPER_ADAPTIVE_AUROC[0]} on its adaptive attack '
            f'({PAPER_ADAPTIVE_AUROC[1]}).']
  return lines


def _spread(parts: dict) -> dict:
  """``{mode: 'min–max'}`` of the non-NaN AUROCs per mode ('–' where none)."""
  out = {}
  for m in ('data-free', 'data-limited'):
    vals = [v for v in parts[m] if not np.isnan(v)]
    out[m] = f'{min(vals):.3f}–{max(vals):.3f}' if vals else '–'
  return out


def multi_label(record: dict, extras: dict) -> list[str]:
  """Pooled and per-label AUROC per model, by the number of infected labels."""
  del extras
  paper = record['paper_all_labels_auroc']
  lines = ['Pooled: the positives of every backdoor that formed against one benign set. '
           'Per label: min–max over the backdoors. ASR per label in infection order.', '',
           '| model | infected labels | epochs | BA | ASR per label | AUROC data-free (pooled / '
           'per label) | AUROC data-limited (pooled / per label) |',
           '|---|---:|---:|---:|---|---:|---:|']
  for r in record['rows']:
    spread = _spread(r['per_label'])
    asr = ' '.join(f"{label}:{a:.2f}" for label, a in zip(r['labels'], r['asr']))
    lines.append(f"| {Path(r['ckpt']).name} | {r['num_infected']}/{r['num_classes']} | "
                 f"{r['epochs']} | {r['ba']:.3f} | {asr} | {_fmt(r['data-free'])} / "
                 f"{spread['data-free']} | {_fmt(r['data-limited'])} / {spread['data-limited']} |")
  if any(np.isnan(v) for r in record['rows'] for v in r['per_label']['data-free']):
    lines += ['', 'A backdoor with ASR 0 never formed: it has no positives and is left out.']
  lines += ['', f"Paper: AUROC {paper['relation']} {paper['value']} even with every label "
            f"infected, and data-limited above data-free ({paper['source']}; BadNets 4×4, "
            'CIFAR-10, ResNet, 200 epochs).']
  return lines


def multi_trigger(record: dict, extras: dict) -> list[str]:
  """Pooled and per-trigger ASR and AUROC per model, by the number of triggers."""
  del extras
  paper = record['paper']
  lines = ['The poisoned evaluation images cycle through the triggers. Pooled: every successful '
           'poisoned image; per trigger: min–max over the triggers.', '',
           '| model | triggers | poisoning rate | epochs | BA | ASR per trigger | AUROC data-free '
           '(pooled / per trigger) | AUROC data-limited (pooled / per trigger) |',
           '|---|---:|---:|---:|---:|---|---:|---:|']
  for r in record['rows']:
    spread = _spread(r['per_trigger'])
    asr = ' '.join(f'{a:.3f}' for a in r['asr_per_trigger'])
    lines.append(f"| {Path(r['ckpt']).name} | {r['num_triggers']} | {r['poison_rate']:g} | "
                 f"{r['epochs']} | {r['ba']:.3f} | {asr} | {_fmt(r['data-free'])} / "
                 f"{spread['data-free']} | {_fmt(r['data-limited'])} / {spread['data-limited']} |")
  lines += ['', f"Paper ({paper['source']}; CIFAR-10 and Tiny ImageNet, ResNet-34, mixed trigger "
            f"types, each trigger at ASR {paper['relation']} {paper['asr_per_trigger']:.0%}): no "
            'AUROC in the text; "SCALE-UP performs resilient to the increasing number of injected '
            'backdoor triggers".']
  return lines


def robustness(record: dict, extras: dict) -> list[str]:
  """BA, ASR and AUROC per noise std, noisy benign vs noisy poisoned, per model."""
  del extras
  lines = ['Gaussian noise of std s on the query images, which SCALE-UP then amplifies as they '
           'are. benign: noisy benign images against clean positives; poisoned: clean benign '
           'images against noisy positives (those still sent to the target). BA, ASR: on the '
           'noisy images; noise→target: noisy benign images of other classes sent to the target.',
           '']
  for m in record['models']:
    lines += [f"**{Path(m['ckpt']).name}** ({m['attack']}, target {m['target']})", '',
              '| std | BA | ASR | noise→target | positives | AUROC data-free (benign / poisoned '
              'noisy) | AUROC data-limited (benign / poisoned noisy) |',
              '|---:|---:|---:|---:|---:|---:|---:|']
    for r in m['rows']:
      cells = [f"{_fmt(r['benign'][mode])} / {_fmt(r['poisoned'][mode])}"
               for mode in ('data-free', 'data-limited')]
      lines.append(f"| {r['std']:g} | {r['ba']:.3f} | {r['asr']:.3f} | "
                   f"{r['benign_to_target']:.3f} | {r['num_positives']} | {cells[0]} | {cells[1]} |")
    lines.append('')
  lines.append(f"Paper: {record['paper_claim']}.")
  return lines


# ------------------------------------------------------------------ reproduce.json, summary.md


def kept_results(path: Path, quick: bool, names: Sequence[str]) -> dict:
  """Experiments of an earlier ``reproduce.json`` at ``path`` that this run keeps.

  A run restricted by ``--only`` updates its experiments and keeps the others'
  results (each records the command that made it), so the tables can be built
  one experiment at a time. Nothing is kept from a missing or unreadable file,
  from a run of the other mode (``quick`` vs full), or for a name not in ``names``.
  """
  if not path.is_file():
    return {}
  try:
    old = json.loads(path.read_text())
    if bool(old['options']['quick']) != bool(quick):
      return {}
    return {k: v for k, v in old['experiments'].items() if k in names}
  except (json.JSONDecodeError, KeyError, TypeError):
    return {}


def _jsonable(v):
  if isinstance(v, (np.integer, np.floating)):
    return v.item()
  if isinstance(v, np.ndarray):
    return v.tolist()
  if isinstance(v, Path):
    return str(v)
  raise TypeError(f'not JSON-serialisable: {type(v).__name__}')


def summary_markdown(summary: dict, titles: Mapping[str, str]) -> str:
  """``summary.md``: one section per experiment linking its table and figure.

  Each experiment names the command that produced it (experiments kept from an
  earlier ``--only`` run keep theirs) and its image counts and seed.

  Args:
    summary: the ``reproduce.json`` dictionary.
    titles: ``{experiment: title}``.
  """
  o = summary['options']
  lines = ['# SCALE-UP reproduction (CPU scale)', '',
           f"Latest command: `{summary['command']}`" if summary['command'] else '', '',
           f"{'Quick (test-sized) run. ' if o['quick'] else ''}Device {summary['device']}, "
           f"jax {summary['jax_version']}; the latest command took {summary['wall_seconds']:.0f} s. "
           'Numbers: [reproduce.json](reproduce.json).',
           '', '| experiment | status | table | figure |', '|---|---|---|---|']
  for name, r in summary['experiments'].items():
    if r['status'] == 'ok':
      lines.append(f"| {titles[name]} | ok ({r['seconds']:.0f} s) | [{r['md']}]({r['md']}) | "
                   f"[{r['png']}]({r['png']}) |")
    else:
      lines.append(f"| {titles[name]} | skipped: {r['reason']} | – | – |")
  for name, r in summary['experiments'].items():
    if r['status'] != 'ok':
      continue
    lines += ['', f'## {titles[name]}', '']
    if 'num_images' in r:
      lines += [f"Made by `{r.get('command') or '(no command recorded)'}` with {r['num_images']} "
                f"evaluation images per model, {r['num_defense_per_class']} defender images per "
                f"class, seed {r['seed']}.", '']
    lines += [f"Table: [{r['md']}]({r['md']})", '', f"![{name}]({r['png']})"]
  return '\n'.join(lines).rstrip() + '\n'


def write_summary(out: Path, summary: dict, titles: Mapping[str, str]) -> None:
  """Writes ``out/reproduce.json`` (``summary``) and ``out/summary.md`` (:func:`summary_markdown`).

  Each file is replaced atomically: a crash leaves the previous version whole.
  """
  integrity.atomic_write_json(Path(out) / 'reproduce.json', summary, default=_jsonable)
  integrity.atomic_write_text(Path(out) / 'summary.md', summary_markdown(summary, titles))
