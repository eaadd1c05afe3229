"""The failure map's markdown (``failure_map.md``, ``docs/failure_map.md``), generated from its JSON.

Every number and every sentence of the sections below comes from
``failure_map.json`` (:func:`scaleup_jax.failure_map.experiment.run`), except
the numbers other people reported (:data:`REPORTED`, cited) and the section
between :data:`HAND_BEGIN` and :data:`HAND_END`, which is left for a person to
write and kept when the report is regenerated.
"""

from __future__ import annotations

import math
from typing import Any

from scaleup_jax.failure_map import experiment

# Below this AUROC a mode "fails" in the generated readings.
LOW_AUROC = 0.7
# A reported low AUROC is "reproduced" by a model of ours below this.
REPRODUCED_BELOW = 0.6
HAND_BEGIN = '<!-- hand-written interpretation: begin (kept when the report is regenerated) -->'
HAND_END = '<!-- hand-written interpretation: end -->'
HAND_PLACEHOLDER = ('_To be written by the lead once the map is complete: what the numbers above '
                    'say about SCALE-UP and which trigger patterns defeat it._')

# SCALE-UP failures on CIFAR-10 BadNets reported by users of the PyTorch code.
REPORTED = (
    {'source': 'BackdoorBox issue #75', 'url': 'https://github.com/THUYimingLi/BackdoorBox/issues/75',
     'setting': 'BackdoorBox BadNets, CIFAR-10, all-to-one; BA 0.920, ASR 0.974',
     'trigger': "not stated; the maintainers' reply blames the trigger (SCALE-UP is limited on "
                'small white squares and black-and-white checkerboards) and recommends a 3x3 '
                'random-noise patch',
     'auroc': 0.4508, 'mode': 'data-free and data-limited (same number)',
     'compare': ('white', 'checkerboard')},
    {'source': 'BackdoorBox issue #84', 'url': 'https://github.com/THUYimingLi/BackdoorBox/issues/84',
     'setting': 'BackdoorBox BadNets, CIFAR-10; BA 0.916, ASR 1.000 (the same reporter got 0.924 '
                "with BackdoorBox's own test_SCALE_UP.py)",
     'trigger': "re-randomised by the reporter after the maintainers' advice "
                '(`pattern[-3:, 3:] = random`, as written in the issue)',
     'auroc': 0.2945, 'mode': 'data-free', 'compare': ('white', 'checkerboard', 'random')},
    {'source': 'JunfengGo/SCALE-UP issue #5', 'url': 'https://github.com/JunfengGo/SCALE-UP/issues/5',
     'setting': "BackdoorBox's tests/test_BadNets.py (CIFAR-10; BA 0.871, ASR 1.000 for the "
                'reporter); AUROC from a commenter, ResNet-18 BadNets',
     'trigger': 'test_BadNets.py default: white 3x3 patch in the bottom-right corner, target 1, '
                'poisoning rate 0.05',
     'auroc': 0.5267, 'mode': 'data-free', 'compare': ('white',)},
)

PATTERN_WORDS = {'random': 'random-valued patch', 'white': 'white square', 'black': 'black square',
                 'checkerboard': 'checkerboard patch', 'blend': 'blended full-image noise'}


def _f(v, fmt: str = '.3f', none: str = '-') -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return none
  return format(v, fmt)


def _pct(v) -> str:
  return _f(v, '.0%')


def _spc(rec: dict, group: str, what: str = 'mean'):
  return rec['mechanism']['spc'][group][what]


def _goes(rec: dict, group: str, what: str, i: int = -1):
  v = rec['mechanism']['goes_to'][group][what]
  return v[i] if v else None


def _name(rec: dict, k) -> str:
  names = rec.get('class_names') or []
  return f'{names[k]} ({k})' if k is not None and k < len(names) else str(k)


def _tpr(rec: dict, mode: str) -> str:
  op = (rec.get('tpr_at_5fpr') or {}).get(mode)
  if not op:
    return '-'
  lo, hi = op['tpr_interval']
  return f"{op['tpr']:.3f} [{lo:.2f}, {hi:.2f}]"


def _short(model: str) -> str:
  return model.replace('zoo/failure_map/', '').replace('zoo/', '')


def explain(model: str, rec: dict) -> list[str]:
  """Sentences on one model, each built from its measured numbers.

  Returns:
    A list of sentences: the headline numbers; whether the trigger survives
    amplification (SPC of the successful poisoned images against the benign
    ones, where x11 poisoned images go, how much of the trigger is left); the
    sink class; and a reading of each mode conditioned on those numbers.
  """
  a_df = (rec.get('auroc') or {}).get('data-free')
  a_dl = (rec.get('auroc') or {}).get('data-limited')
  t = rec['target']
  tname = _name(rec, t)
  big = rec['mechanism']['goes_to']['benign']['factors'][-1]
  sp, sp1 = _spc(rec, 'poisoned_successful'), _spc(rec, 'poisoned_successful', 'at_one')
  sb, sb1 = _spc(rec, 'benign_all'), _spc(rec, 'benign_all', 'at_one')
  sbt, sbo = _spc(rec, 'benign_target_true'), _spc(rec, 'benign_other')
  sbp = _spc(rec, 'benign_target_pred')
  out = [f"**{_short(model)}** ({rec['variant']}, target {tname}): BA {_f(rec['ba'])}, ASR "
         f"{_f(rec['asr'])}; AUROC {_f(a_df, '.2f')} data-free, {_f(a_dl, '.2f')} data-limited; "
         f"calibrated TPR at 5% FPR {_tpr(rec, 'data-free')} data-free, "
         f"{_tpr(rec, 'data-limited')} data-limited."]
  if rec['asr'] is not None and rec['asr'] < 0.5:
    out.append(f"The backdoor is weak (ASR {_f(rec['asr'], '.2f')}): the AUROC is measured on "
               f"{rec['num_positives']} {rec['positives']} images.")
  if sp is not None:
    p_t = _goes(rec, 'poisoned_successful', 'to_target')
    top, top_s = (_goes(rec, 'poisoned_successful', 'top_class'),
                  _goes(rec, 'poisoned_successful', 'top_share'))
    s = (f'Amplified x{big:g}, {_pct(p_t)} of the successful poisoned images are still called '
         f'{tname}')
    if top is not None and top != t:
      s += f', {_pct(top_s)} are called {_name(rec, top)}'
    s += (f'; their mean SPC is {_f(sp, ".2f")} ({_pct(sp1)} at SPC = 1) against {_f(sb, ".2f")} '
          f'({_pct(sb1)} at SPC = 1) for the benign images.')
    out.append(s)
  kept = (rec['mechanism'].get('trigger_kept') or {}).get('kept')
  if kept:
    out.append(f"At x{big:g}, after clipping, the poisoned images differ from their clean "
               f"sources by {_pct(kept[-1])} of the unamplified difference (x"
               f"{rec['mechanism']['trigger_kept']['factors'][0]:g}: {_pct(kept[0])}).")
  sinks = list(rec.get('sinks') or [])
  x_big = rec['mechanism']['goes_to']['benign']
  share = lambda k: x_big['shares'][-1][k] if x_big.get('shares') else None
  sink_words = ', '.join(f'{_name(rec, k)} ({_pct(share(k))} of the benign x{big:g} images)'
                         for k in sinks)
  if rec.get('target_is_sink'):
    others = [k for k in sinks if k != t]
    s = (f"The target is {'the' if not others else 'one of the'} model's sink "
         f"class{'es' if others else ''}: {sink_words}")
    if others and share(others[0]) is not None and share(t) is not None and share(others[0]) > share(t):
      s += f'; {_name(rec, others[0])} takes more of them than the target'
    out.append(s + f'. Benign images of the target class have mean SPC {_f(sbt, ".2f")} '
               f'(other classes {_f(sbo, ".2f")}).')
  elif sinks:
    out.append(f"The model's sink class{'es are' if len(sinks) > 1 else ' is'} {sink_words}, not "
               f'the target; benign images of the target class have mean SPC {_f(sbt, ".2f")} '
               f'(other classes {_f(sbo, ".2f")}).')
  else:
    out.append(f'The model has no sink class (no class takes 25% of the benign x{big:g} images '
               f'of the defender); benign images of the target class have mean SPC '
               f'{_f(sbt, ".2f")} (other classes {_f(sbo, ".2f")}).')
  # Readings, conditioned on the numbers above.
  p_t = _goes(rec, 'poisoned_successful', 'to_target')
  lost = p_t is not None and p_t < 0.5
  lost_words = (f'the trigger does not survive amplification: only {_pct(p_t)} of the x{big:g} '
                'poisoned images keep the target label')
  if a_df is not None and sp is not None and sb is not None:
    if a_df < 0.5 and sp < sb:
      s = (f'Reading: data-free AUROC {a_df:.2f} is below chance because the poisoned images are '
           f'*less* consistent under amplification than the benign ones ({sp:.2f} < {sb:.2f})')
      out.append(s + (f'; {lost_words}.' if lost else '.'))
    elif a_df < LOW_AUROC:
      s = (f'Reading: data-free AUROC {a_df:.2f}: the poisoned images are barely more consistent '
           f'than the benign ones (mean SPC {sp:.2f} against {sb:.2f})')
      if lost:
        s += f'; {lost_words}'
      elif sb1 is not None and sb1 > 0.05 and sp1 is not None and sp1 > 0.5:
        s += (f'; {_pct(sb1)} of the benign images sit at SPC = 1 with {_pct(sp1)} of the '
              'poisoned ones, and those ties cap the TPR at 5% FPR')
      out.append(s + '.')
    else:
      s = f'Reading: data-free SCALE-UP works here (AUROC {a_df:.2f}; mean SPC {sp:.2f} against {sb:.2f})'
      if sb1 is not None and sb1 > 0.05:
        s += f', though {_pct(sb1)} of the benign images also sit at SPC = 1'
      out.append(s + '.')
  if a_dl is not None and a_df is not None and a_dl < LOW_AUROC and a_dl < a_df - 0.05:
    s = (f'The data-limited mode does worse ({a_dl:.2f}): it standardises SPC by the benign '
         f'statistics of the predicted class, and benign images predicted as {tname} have mean '
         f'SPC {_f(sbp, ".2f")}')
    if sp is not None and sbp is not None and sp <= sbp:
      s += (f', at or above the poisoned images\' {sp:.2f}: standardised, the poisoned images '
            'score no higher than benign ones of their class.')
    elif rec.get('target_is_sink') and sp is not None and sp >= 0.8:
      s += (f' (a sink class: its benign images are consistent too, so the poisoned images\' '
            f'{sp:.2f} stands out less there than raw SPC does against all benign images).')
    else:
      s += '.'
    out.append(s)
  elif a_dl is not None and a_df is not None and a_dl > a_df + 0.05:
    out.append(f'The data-limited mode does better ({a_dl:.2f} against {a_df:.2f}): '
               'standardising by the predicted class discounts the classes whose benign images '
               'are consistent anyway.')
  for mode in ('data-free', 'data-limited'):
    op = (rec.get('tpr_at_5fpr') or {}).get(mode) or {}
    if op.get('reading'):
      out.append(f"{mode.capitalize()} at 5% FPR: {op['reading']}.")
  return out


def _by_variant(results: dict) -> dict[str, list[str]]:
  out: dict[str, list[str]] = {}
  for name, rec in results['models'].items():
    out.setdefault(rec['variant'], []).append(name)
  return out


def variant_summary(variant: str, names: list[str], results: dict) -> str:
  """One paragraph per pattern variant: AUROC at each target measured and where it is low."""
  recs = [(n, results['models'][n]) for n in names]
  recs.sort(key=lambda nr: nr[1]['target'])
  pattern = recs[0][1]['pattern']
  parts = []
  for n, r in recs:
    a = (r.get('auroc') or {})
    parts.append(f"target {_name(r, r['target'])}{' = sink' if r.get('target_is_sink') else ''}: "
                 f"{_f(a.get('data-free'), '.2f')} / {_f(a.get('data-limited'), '.2f')}")
  s = (f"**{variant}** ({PATTERN_WORDS.get(pattern, pattern)}), AUROC data-free / data-limited "
       f"by target: {'; '.join(parts)}.")
  low = [r for _, r in recs if (r.get('auroc') or {}).get('data-free') is not None
         and r['auroc']['data-free'] < LOW_AUROC]
  sinkish = lambda r: ' (a sink class)' if r.get('target_is_sink') else ''
  if not low:
    s += f' Data-free AUROC is at least {LOW_AUROC} at every target measured.'
  elif len(low) == len(recs) and len(recs) > 1:
    s += (f' Data-free AUROC is below {LOW_AUROC} at every target measured'
          + (', sink class or not' if len({bool(r.get('target_is_sink')) for _, r in recs}) > 1
             else '') + '.')
  elif (all(r.get('target_is_sink') for r in low)
        and any(not r.get('target_is_sink') for _, r in recs)):
    s += f' Data-free AUROC is below {LOW_AUROC} only where the target is a sink class.'
  elif (not any(r.get('target_is_sink') for r in low)
        and any(r.get('target_is_sink') for _, r in recs)):
    s += (f' Data-free AUROC is below {LOW_AUROC} only where the target is not a sink class: '
          f"{', '.join(_name(r, r['target']) for r in low)}.")
  else:
    s += (f" Data-free AUROC is below {LOW_AUROC} at target "
          f"{', '.join(_name(r, r['target']) + sinkish(r) for r in low)}.")
  return s


def reported_rows(results: dict) -> list[str]:
  """The table of reported failures against the measured map cells."""
  lines = ['| reported | their setting | trigger | reported AUROC | our models of the same pattern '
           '(data-free AUROC) | reproduced? |', '|---|---|---|---|---|---|']
  for rep in REPORTED:
    ours = [(n, r) for n, r in results['models'].items() if r['pattern'] in rep['compare']
            and (r.get('auroc') or {}).get('data-free') is not None]
    ours.sort(key=lambda nr: nr[1]['auroc']['data-free'])
    cells = '; '.join(f"{_short(n)}: {r['auroc']['data-free']:.2f}" for n, r in ours) or 'none yet'
    if not ours:
      verdict = 'not measured yet'
    else:
      low = [n for n, r in ours if r['auroc']['data-free'] < REPRODUCED_BELOW]
      if len(low) == len(ours):
        verdict = f'yes: every one below {REPRODUCED_BELOW}'
      elif low:
        verdict = f"partly: below {REPRODUCED_BELOW} for {', '.join(_short(n) for n in low)}"
      else:
        verdict = f'no: all at least {REPRODUCED_BELOW}'
      if all(r.get('target_is_sink') for _, r in ours):
        verdict += ' (only models whose target is a sink class so far)'
    lines.append(f"| [{rep['source']}]({rep['url']}) | {rep['setting']} | {rep['trigger']} | "
                 f"{rep['auroc']:.2f} ({rep['mode']}) | {cells} | {verdict} |")
  return lines


def grid_table(results: dict, metric: str) -> list[str]:
  """A markdown version of one heatmap panel ('-': no model)."""
  g = experiment.map_grid(results)
  m = experiment.metric_matrix(results, metric)
  first = next(iter(results['models'].values()))
  head = [_name(first, k) for k in g['cols']]
  lines = ['| pattern \\ target | ' + ' | '.join(head) + ' |',
           '|---|' + '---|' * len(head)]
  for i, row in enumerate(g['rows']):
    cells = []
    for j, col in enumerate(g['cols']):
      name = g['cells'].get((row, col))
      v = m[i, j]
      if name is None:
        cells.append('-')
      else:
        sink = results['models'][name].get('target_is_sink')
        cells.append(('**' + _f(v, '.2f', 'n/a') + '** (sink)') if sink else _f(v, '.2f', 'n/a'))
    lines.append(f'| {row} | ' + ' | '.join(cells) + ' |')
  return lines


def _hand_section(previous: str | None) -> str:
  if previous and HAND_BEGIN in previous and HAND_END in previous:
    body = previous.split(HAND_BEGIN, 1)[1].split(HAND_END, 1)[0].strip('\n')
    if body.strip():
      return body
  return HAND_PLACEHOLDER


def markdown(results: dict[str, Any], image_dir: str = '.', previous: str | None = None) -> str:
  """The report.

  Args:
    results: from :func:`scaleup_jax.failure_map.experiment.run` (or its JSON).
    image_dir: where ``heatmap.png`` and ``mechanism.png`` are, relative to the
      markdown file.
    previous: the file's current text; its hand-written section is kept.

  Returns:
    Markdown text.
  """
  cfg = results['config']
  models = results['models']
  img = (image_dir.rstrip('/') + '/') if image_dir not in ('', '.') else ''
  out = ['# SCALE-UP failure map', '',
         'Generated by `python -m eval.failure_map` from `failure_map.json` (issue #19); only the '
         'marked interpretation section is hand-written. Which trigger patterns and target '
         'classes defeat SCALE-UP on CIFAR-10 BadNets-style ResNet-20s, and why, measured.', '']
  if not models:
    return '\n'.join(out + ['No model evaluated yet.', ''])
  if results.get('commands'):
    out += ['Evaluation command(s):', '', '```'] + list(results['commands']) + ['```', '']
  first = next(iter(models.values()))
  out += [f"Per model: up to {cfg['num_images']} CIFAR-10 test images for evaluation (benign "
          f"negatives; those of a class other than the target, triggered, are the poisoned "
          f"positives, the successfully attacked ones counted), {cfg['num_defense_per_class']} "
          f"defender images per class (disjoint) for the data-limited statistics, the calibrated "
          f"5%-FPR thresholds (conformal rule) and the sink classes; scales "
          f"{', '.join(f'{s:g}' for s in cfg['scales'])}; seed {cfg['seed']}. AUROC and TPR come "
          f"from `scaleup_jax.evaluate.evaluate_detection`; TPR is at a threshold calibrated on "
          f"the defender's images for a 5% FPR, with its exact 95% interval. The map's models "
          f"are 5-epoch ResNet-20s (`train/configs/failure_map_resnet20.py`: poisoning rate 0.1, "
          f"5x5 patches one pixel from the bottom-right corner, blend alpha 0.2); rows marked "
          f"otherwise differ from that recipe as named.", '']
  out += [f'![failure map heatmaps]({img}heatmap.png)', '',
          f'![mechanism]({img}mechanism.png)', '']

  out += ['## The map', '']
  for metric, (title, _) in experiment.METRICS.items():
    out += [f'### {title}', ''] + grid_table(results, metric) + ['']
  out += ["`-`: no model for that cell yet. **(sink)**: the target is the model's sink class "
          "(the class that takes the amplified images, measured on the defender's benign images "
          'by `scaleup_jax.diagnose`).', '']
  dups = experiment.map_grid(results)['duplicates']
  if dups:
    out += ['Also measured for a cell that already has a model (in the tables below, not in the '
            'heatmap): ' + ', '.join(f'`{d}`' for d in dups) + '.', '']

  out += ['## Every model', '',
          '| model | pattern | target | rate | epochs | BA | ASR | AUROC data-free | AUROC '
          'data-limited | TPR@5% FPR data-free [95% CI] | TPR@5% FPR data-limited [95% CI] | best '
          'label-only score (TPR@5%) | positives | benign |', '|---' * 14 + '|']
  for name, r in models.items():
    best = r.get('best_score')
    b = f"{best['name']} ({best['tpr']:.3f})" if best else '-'
    out.append(f"| `{name}` | {r['variant']} | {_name(r, r['target'])} | {r['rate']:g} | "
               f"{r['epochs']} | {_f(r['ba'])} | {_f(r['asr'])} | "
               f"{_f((r.get('auroc') or {}).get('data-free'))} | "
               f"{_f((r.get('auroc') or {}).get('data-limited'))} | {_tpr(r, 'data-free')} | "
               f"{_tpr(r, 'data-limited')} | {b} | {r['num_positives']} | {r['num_benign']} |")
  out.append('')
  big = first['mechanism']['goes_to']['benign']['factors'][-1]
  out += ['### Mechanism', '',
          f'Mean SPC (share at SPC = 1) by group, where the x{big:g}-amplified images go, and how '
          f'much of the trigger survives x{big:g} (`trigger kept`: '
          'sum |clip(n x\') - clip(n x)| / sum |x\' - x| over poisoned x\' and clean sources x).', '',
          '| model | poisoned (successful) | benign, true class = target | benign, predicted = '
          f'target | benign, other classes | poisoned x{big:g} -> target | benign x{big:g} -> '
          f"target | model's sink class (benign x{big:g} share) | target = sink | trigger kept "
          f'x{big:g} |', '|---' * 10 + '|']
  for name, r in models.items():
    g = lambda k: f"{_f(_spc(r, k), '.2f')} ({_pct(_spc(r, k, 'at_one'))})"
    sink = (', '.join(_name(r, k) for k in r['sinks']) + f" ({_pct(_goes(r, 'benign', 'to_sinks'))})"
            if r.get('sinks') else 'none')
    kept = (r['mechanism'].get('trigger_kept') or {}).get('kept')
    out.append(f"| `{name}` | {g('poisoned_successful')} | {g('benign_target_true')} | "
               f"{g('benign_target_pred')} | {g('benign_other')} | "
               f"{_pct(_goes(r, 'poisoned_successful', 'to_target'))} | "
               f"{_pct(_goes(r, 'benign', 'to_target'))} | {sink} | "
               f"{'yes' if r.get('target_is_sink') else 'no'} | {_pct(kept[-1]) if kept else '-'} |")
  out.append('')
  out += ['Share of amplified images predicted as the target, by factor '
          f"({', '.join('x' + format(f, 'g') for f in first['mechanism']['goes_to']['benign']['factors'])}):",
          '', '| model | poisoned (successful) | benign | benign, true class = target |',
          '|---|---|---|---|']
  for name, r in models.items():
    row = lambda k: ' '.join(_f(v, '.2f') for v in (r['mechanism']['goes_to'][k]['to_target'] or []))
    out.append(f"| `{name}` | {row('poisoned_successful') or '-'} | {row('benign')} | "
               f"{row('benign_target_true') or '-'} |")
  out.append('')

  out += ['### Commands', '', '| model | trained with | evaluated with |', '|---|---|---|']
  for name, r in models.items():
    out.append(f"| `{name}` | `{r.get('train_command') or 'not recorded'}` | "
               f"`{r.get('eval_command') or '-'}` |")
  out.append('')

  out += ['## My trigger is X and my AUROC is low: why?', '',
          'Find your pattern; each model\'s sentences are generated from its measured numbers.', '']
  for variant, names in _by_variant(results).items():
    out += [f'### {variant}', '', variant_summary(variant, names, results), '']
    for n in sorted(names, key=lambda n: models[n]['target']):
      out += ['- ' + ' '.join(explain(n, models[n]))]
    out.append('')
  missing = [p for p in experiment.PATTERNS if p not in _by_variant(results)]
  if missing:
    out += ['Not measured yet: ' + ', '.join(f'{p} ({PATTERN_WORDS[p]})' for p in missing) + '.', '']

  out += ['## The reported failures: reproduced or not', '',
          'Low SCALE-UP AUROCs that users of the PyTorch code reported on CIFAR-10 BadNets, against '
          'our models of the same trigger pattern. Their settings differ from ours (their patch is '
          '3x3 at the very corner, ours 5x5 one pixel in; other rates, epochs and networks), so the '
          'comparison is by pattern; the reasons are in the sections above.', '']
  out += reported_rows(results) + ['']

  out += ['## Interpretation', '', HAND_BEGIN, _hand_section(previous), HAND_END, '']
  return '\n'.join(out)
