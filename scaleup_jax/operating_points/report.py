"""Markdown tables of a :func:`run_operating_points` result.

``python -m eval.operating_points`` writes them to ``operating_points.md`` next
to ``operating_points.json``; ``docs/method.md`` links them.
"""

from __future__ import annotations

from typing import Any

TARGET_MODEL = 'v2/cifar10_badnets_resnet20'
TARGET_TPR, TARGET_ALPHA = 0.80, '0.05'


def _ci(r: dict) -> str:
  lo, hi = r['interval']
  return f"{r['rate']:.3f} [{lo:.3f}, {hi:.3f}]"


def _rule(op: dict) -> str:
  if not op['feasible']:
    return 'flags nothing'
  return f"> {op['threshold']:.4g}; = w.p. {op['tie_prob']:.2f}"


def markdown(results: dict[str, Any]) -> str:
  """The report: settings, a cost/AUROC table, the operating-point table, checks.

  Args:
    results: from :func:`run_operating_points` (or its JSON).

  Returns:
    Markdown text.
  """
  cfg = results['config']
  models = results['models']
  out = ['# Operating points of the label-only scores', '']
  if results.get('command'):
    out += ['Command:', '', '```', results['command'], '```', '']
  first = next(iter(models.values()))
  cal = first.get('calibration') or {}
  out += [f"Per model: {first['num_benign']} held-out benign evaluation images, the successfully "
          f"attacked poisoned ones as positives, {cal.get('num_calibration')} defender images "
          f"({cfg['num_defense_per_class']} per class, disjoint from the evaluation images) to "
          f"calibrate on; scores that fit benign statistics fit on half of them "
          f"({cal.get('num_fit')}) and calibrate on the other half. Rule: **{cfg['rule']}** "
          f"({cal.get('guarantee')}). Seed {cfg['seed']}. Rates are realised with the seeded tie "
          'coins; [..] is the exact 95% Clopper-Pearson interval. `*` marks the paper\'s modes '
          '(data-free SPC = Eq. 1-2, data-limited = Eq. 3-4).', '']

  out += ['## Cost and ranking', '',
          '| model | score | forwards / image | AUROC | TPR at 5% FPR |', '|---|---|---|---|---|']
  for name, rec in models.items():
    for score, e in rec['operating_points'].items():
      op = e['alphas'].get('0.05')
      extra = ' (+1 per model)' if e.get('per_model_forwards') else ''
      out.append(f"| {name} | {'* ' if e['paper'] else ''}{e['label']} | "
                 f"{e['forwards_per_image']}{extra} | {e['auroc']:.3f} | "
                 f"{_ci(op['tpr']) if op else '-'} |")
  out.append('')

  out += ['## Operating points', '',
          '| model | score | alpha | rule (threshold; tie probability) | realised FPR [95% CI] | '
          'TPR [95% CI] | alpha in FPR CI | within sampling error |',
          '|---|---|---|---|---|---|---|---|']
  readings = []
  for name, rec in models.items():
    for score, e in rec['operating_points'].items():
      for a_key, op in e['alphas'].items():
        out.append(f"| {name} | {'* ' if e['paper'] else ''}{e['label']} | {float(a_key):.0%} | "
                   f"{_rule(op)} | {_ci(op['fpr'])} | {_ci(op['tpr'])} | "
                   f"{'yes' if op['alpha_in_fpr_interval'] else 'no'} | "
                   f"{'yes' if op['within_sampling_error'] else 'no'} |")
        if op.get('reading'):
          readings.append(f"- {name}, {e['label']}, {float(a_key):.0%}: {op['reading']}")
  out.append('')
  if readings:
    out += ['Readings (why a rate is 0 or a budget is unmet):', ''] + readings + ['']

  ops = [op for rec in models.values() for e in rec['operating_points'].values()
         for op in e['alphas'].values()]
  inside = sum(op['alpha_in_fpr_interval'] for op in ops)
  within = sum(op['within_sampling_error'] for op in ops)
  out += ['## Checks', '',
          f"- alpha inside the realised FPR's 95% interval: {inside} of {len(ops)} operating points "
          '(the interval covers the held-out sampling only; the calibration draw adds a spread of '
          'about sqrt(alpha (1 - alpha) / n), so some misses are expected).',
          f"- realised FPR <= alpha + 1.96 sqrt(alpha (1 - alpha) (1/n + 1/N)) (both samplings): "
          f"{within} of {len(ops)}."]
  if TARGET_MODEL in models:
    best = max(((e['alphas'][TARGET_ALPHA]['tpr']['rate'], e['label'])
                for e in models[TARGET_MODEL]['operating_points'].values()), default=None)
    if best:
      verdict = 'met' if best[0] >= TARGET_TPR else f'missed by {TARGET_TPR - best[0]:.3f}'
      out.append(f"- target (issue 18): TPR >= {TARGET_TPR} at 5% FPR on {TARGET_MODEL} with a "
                 f"label-only score: best {best[0]:.3f} ({best[1]}), {verdict}.")
  else:
    out.append(f'- target (issue 18), TPR >= {TARGET_TPR} at 5% FPR on {TARGET_MODEL}: not '
               'measured here (model not in this run).')
  out.append('')
  return '\n'.join(out)
