"""Markdown tables of the key numbers of a :func:`run_theory` result.

``python -m eval.theory`` writes them to ``summary.md`` next to
``theory.json``; ``docs/theory.md`` quotes them.

References:
  Guo et al., "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection
  via Analyzing Scaled Prediction Consistency", ICLR 2023.
  https://arxiv.org/abs/2302.03251
"""

from __future__ import annotations

from typing import Any


def _pick(rows, **kw):
  for r in rows:
    if all(r[k] == v for k, v in kw.items()):
      return r
  raise KeyError(f'no result row matches {kw}')


def _f(x, digits: int = 2) -> str:
  if x is None:
    return '-'
  if isinstance(x, float):
    return f'{x:.{digits}f}'
  return str(x)


def _clip(clip: bool) -> str:
  return 'clip' if clip else 'no clip'


def _table(header, rows) -> list[str]:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return lines


def _cell(r) -> str:
  """theorem_frac, or 'D (acc)' for a degenerate classifier."""
  return f"D ({r['clean_acc']:.2f})" if r['degenerate'] else f"{r['theorem_frac']:.2f}"


def markdown_tables(results: dict[str, Any]) -> str:
  """Returns the key-number tables of ``results`` as Markdown.

  Args:
    results: the dict returned by :func:`run_theory` (or loaded from
      ``theory.json``).

  Returns:
    Markdown text with five tables: the default setting, the ratio sweep, the
    gamma sweep, the trigger-size sweep (RBF) and the NTK runs.
  """
  cfg = results['config']
  grid = results['rbf']['grid']
  patterns = cfg['trigger_patterns']
  last = results['scales'][-1]
  out = []

  out.append(f"**Default setting** (RBF, N_p/N_b = {cfg['ratio']}, gamma = {cfg['gamma']}, trigger "
             f"{cfg['trigger_size']}/{cfg['dim']} coordinates, N_b = {cfg['num_benign']}, "
             f"{cfg['num_test']} benign test inputs). 'all n' = fraction of poisoned inputs with "
             f"C(n x') = y_t for every n in 1..{last}.")
  out.append('')
  rows = []
  for pattern in patterns:
    for clip in (False, True):
      r = _pick(grid, pattern=pattern, clip=clip, gamma=cfg['gamma'], ratio=cfg['ratio'])
      rows.append([pattern, _clip(clip), _f(r['clean_acc']), _f(r['asr_n1']), _f(r['theorem_frac']),
                   _f(r['first_failing_scale'], 0), _f(r['phi_t_poison_mean_by_scale'][-1]),
                   _f(r['poison_mass_by_scale'][-1]), _f(r['spc_poison']), _f(r['spc_benign']),
                   _f(r['spc_auroc'])])
  out += _table(['trigger', 'amplification', 'clean acc', "C(x')=y_t", 'all n', 'first n failing',
                 f"mean phi_t({last}x')", f"W_p({last}x')", 'SPC poisoned', 'SPC benign', 'SPC AUROC'], rows)

  out.append('')
  out.append(f"**Poisoning ratio** (gamma = {cfg['gamma']}): 'all n' fraction; D (acc) = degenerate, clean "
             "accuracy < 0.5. Row 'n = 1' is the attack success rate without amplification.")
  out.append('')
  rows = []
  for pattern in patterns:
    rows.append([pattern, 'n = 1'] + [_f(_pick(grid, pattern=pattern, clip=False, gamma=cfg['gamma'],
                                                ratio=ratio)['asr_n1']) for ratio in cfg['ratios']])
    for clip in (False, True):
      rows.append([pattern, _clip(clip)] + [_cell(_pick(grid, pattern=pattern, clip=clip, gamma=cfg['gamma'],
                                                         ratio=ratio)) for ratio in cfg['ratios']])
  out += _table(['trigger', ''] + [f'N_p/N_b={r}' for r in cfg['ratios']], rows)

  out.append('')
  out.append(f"**RBF width** (N_p/N_b = {cfg['ratio']}): 'all n' fraction; D (acc) = degenerate.")
  out.append('')
  rows = []
  for pattern in patterns:
    for clip in (False, True):
      rows.append([pattern, _clip(clip)] + [_cell(_pick(grid, pattern=pattern, clip=clip, gamma=g,
                                                         ratio=cfg['ratio'])) for g in cfg['gammas']])
  out += _table(['trigger', ''] + [f'gamma={g}' for g in cfg['gammas']], rows)

  out.append('')
  out.append(f"**Trigger size** (gamma = {cfg['gamma']}): 'all n' fraction / SPC AUROC; D (acc) = degenerate.")
  out.append('')
  rows = []
  runs = results['rbf']['trigger_size']
  for ratio in cfg['size_sweep_ratios']:
    for pattern in patterns:
      for clip in (False, True):
        cells = []
        for size in cfg['trigger_sizes']:
          r = _pick(runs, pattern=pattern, clip=clip, ratio=ratio, trigger_size=size)
          cells.append(f"{_cell(r)} / {r['spc_auroc']:.2f}")
        rows.append([ratio, pattern, _clip(clip)] + cells)
  out += _table(['N_p/N_b', 'trigger', ''] + [f"{s}/{cfg['dim']}" for s in cfg['trigger_sizes']], rows)

  out.append('')
  ntk = results['ntk']
  out.append(f"**Empirical NTK** of a ReLU MLP {cfg['dim']}-{'-'.join(str(w) for w in cfg['ntk_features'])}-1 "
             f"({ntk['num_params']} parameters, N_b = {cfg['ntk_num_benign']}): KRR = NTK ridge regression, "
             "NW = Eq. 6 with the NTK as kernel. 'all n' fraction; D (acc) = degenerate.")
  out.append('')
  rows = []
  for ratio in sorted(cfg['ntk_ratios'], reverse=True):
    for pattern in patterns:
      for clip in (False, True):
        for reg in ('krr', 'nw'):
          r = _pick(ntk['runs'], pattern=pattern, clip=clip, regressor=reg, ratio=ratio)
          rows.append([ratio, pattern, _clip(clip), reg.upper(), _f(r['clean_acc']), _f(r['asr_n1']), _cell(r),
                       _f(r['first_failing_scale'], 0), _f(r['spc_poison']), _f(r['spc_benign']),
                       _f(r['spc_auroc']), _f(r['preserved_benign_by_scale'][-1])])
  out += _table(['N_p/N_b', 'trigger', 'amplification', 'regressor', 'clean acc', "C(x')=y_t", 'all n',
                 'first n failing', 'SPC poisoned', 'SPC benign', 'SPC AUROC', f'benign kept at n={last}'], rows)
  out.append('')
  return '\n'.join(out)
