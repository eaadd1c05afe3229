"""The registry of :mod:`scaleup_jax.reproduce`'s experiments and the driver that runs them.

:data:`EXPERIMENTS` is the one registry: each name maps to its title and to the
three functions that compute (:mod:`.experiments`), draw (:mod:`.plots`) and
tabulate (:mod:`.report`) it. :func:`reproduce` runs the chosen ones and writes,
under ``opts.out``::

    reproduce.json          every experiment's numbers (or why it was skipped)
    summary.md              links to every table and figure, with the command
    <experiment>.md/.png    one table and one figure per experiment
    table1/                 the raw output of :func:`scaleup_jax.compare.compare`
                            (or ``opts.compare_dir``, which table1 extends)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import jax
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from scaleup_jax.reproduce import experiments as ex
from scaleup_jax.reproduce import plots, report
from scaleup_jax.validation import InputError


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One experiment: its title and how it is computed, tabulated and drawn.

  Attributes:
    title: the heading of its table and of its section in ``summary.md``.
    compute: ``ctx -> Outcome`` (:mod:`.experiments`); raises
      :class:`~.experiments.Skipped` when the models it needs are missing.
    table: ``(record, extras) -> markdown lines`` (:mod:`.report`).
    plot: ``(record, extras) -> Figure`` (:mod:`.plots`).
  """

  title: str
  compute: Callable[[ex.Context], ex.Outcome]
  table: Callable[[dict, dict], list[str]]
  plot: Callable[[dict, dict], Figure]


EXPERIMENTS: dict[str, Experiment] = {
    'table1': Experiment(
        'AUROC per attacked model x detector, with bootstrap 95% intervals (paper Table 1)',
        ex.table1, report.table1, plots.table1),
    'fig2': Experiment('Confidence on the original label vs multiplication factor (paper Fig. 2)',
                       ex.fig2, report.fig2, plots.fig2),
    'fig3': Experiment('SPC of benign images per true class under the attacked model',
                       ex.fig3, report.fig3, plots.fig3),
    'roc': Experiment('ROC curves of SCALE-UP per attacked model', ex.roc, report.roc, plots.roc),
    'ablation_scales': Experiment('AUROC vs size of the scale set (paper Fig. 11)',
                                  ex.ablation_scales, report.ablation_scales, plots.ablation_scales),
    'ablation_defense_size': Experiment(
        'Data-limited AUROC vs benign images per class (paper Fig. 12)',
        ex.ablation_defense_size, report.ablation_defense_size, plots.ablation_defense_size),
    'ablation_noise': Experiment(
        'Additive Gaussian noise instead of amplification (paper Table 7 analog)',
        ex.ablation_noise, report.ablation_noise, plots.ablation_noise),
    'poison_rate': Experiment('AUROC vs poisoning rate (paper Fig. 7)', ex.poison_rate,
                              report.sweep, plots.sweep),
    'trigger_size': Experiment('AUROC vs trigger size (paper Fig. 7)', ex.trigger_size,
                               report.sweep, plots.sweep),
    'multi_label': Experiment('AUROC vs the share of infected labels (paper App. H, Fig. 10)',
                              ex.multi_label, report.multi_label, plots.multi_label),
    'multi_trigger': Experiment('AUROC vs the number of triggers into one label (paper App. G, '
                                'Fig. 9)', ex.multi_trigger, report.multi_trigger,
                                plots.multi_trigger),
    'adaptive': Experiment('Adaptive attack: AUROC and ASR under Gaussian noise (paper Fig. 7)',
                           ex.adaptive, report.adaptive, plots.adaptive),
    'robustness': Experiment('SCALE-UP on noisy benign and noisy poisoned inputs (paper App. L, '
                             'Fig. 13)', ex.robustness, report.robustness, plots.robustness),
}
"""Every experiment, in the order :func:`reproduce` runs and reports them."""


def resolve_options(opts: ex.ReproduceOptions) -> ex.ReproduceOptions:
  """Fills the None fields from the full or quick defaults and validates.

  Raises:
    InputError: an unknown experiment in ``opts.only`` or an out-of-range count.
  """
  defaults = ex._QUICK if opts.quick else ex._FULL
  filled = {k: v for k, v in defaults.items() if getattr(opts, k) is None}
  opts = dataclasses.replace(opts, **filled)
  unknown = [e for e in opts.only if e not in EXPERIMENTS]
  if unknown:
    raise InputError(f'unknown experiment(s) {unknown}; expected some of {", ".join(EXPERIMENTS)}')
  if opts.num_bootstrap < 1:
    raise InputError(f'num_bootstrap must be >= 1; got {opts.num_bootstrap}')
  if opts.noise_copies < 1:
    raise InputError(f'noise_copies must be >= 1; got {opts.noise_copies}')
  if any(m < 1 for m in opts.defense_sizes):
    raise InputError(f'defense_sizes must be >= 1; got {list(opts.defense_sizes)}')
  if any(s < 0 for s in (*opts.noise_stds, *opts.adaptive_noise_stds, *opts.robustness_stds)):
    raise InputError('noise standard deviations must be >= 0')
  return opts


def render(out: Path, name: str, outcome: ex.Outcome, command: str) -> dict:
  """Writes experiment ``name``'s table and figure under ``out`` from its outcome.

  Args:
    out: the output directory.
    name: a key of :data:`EXPERIMENTS`.
    outcome: what its ``compute`` returned.
    command: the command line, printed in the table and along the figure's bottom.

  Returns:
    ``outcome.record`` with the file names ``md`` and ``png`` added.
  """
  e = EXPERIMENTS[name]
  md = report.write_table(out, name, e.title, command, e.table(outcome.record, outcome.extras))
  png = plots.save(e.plot(outcome.record, outcome.extras), Path(out) / f'{name}.png', command)
  return {**outcome.record, 'md': md, 'png': png}


def reproduce(opts: ex.ReproduceOptions) -> dict:
  """Runs the chosen experiments; writes ``reproduce.json`` and ``summary.md`` under ``opts.out``.

  Args:
    opts: the options; None fields take the full or quick defaults
      (:func:`resolve_options`).

  Returns:
    The JSON dictionary: options, device, and per experiment either its result
    (with ``status: 'ok'``, ``seconds``, ``md`` and ``png`` file names) or
    ``{'status': 'skipped', 'reason': ...}``; ``out`` is the output directory.

  Example:
    >>> summary = reproduce(ReproduceOptions(quick=True, ckpt='runs/x', only=('fig3',),
    ...                                      out='/tmp/r'))             # doctest: +SKIP
    >>> summary['experiments']['fig3']['png']                          # doctest: +SKIP
    'fig3.png'
  """
  opts = resolve_options(opts)
  ctx = ex.Context(opts)
  ctx.out.mkdir(parents=True, exist_ok=True)
  names = [e for e in EXPERIMENTS if not opts.only or e in opts.only]
  settings = {'command': opts.command, 'num_images': opts.num_images,
              'num_defense_per_class': opts.num_defense_per_class, 'seed': opts.seed}
  results = {}
  t_start = time.time()
  for name in tqdm(names, desc='experiments', disable=not opts.progress, dynamic_ncols=True):
    t0 = time.time()
    try:
      r = render(ctx.out, name, EXPERIMENTS[name].compute(ctx), opts.command)
      results[name] = {'status': 'ok', 'seconds': round(time.time() - t0, 1), **r, **settings}
    except ex.Skipped as e:
      results[name] = {'status': 'skipped', 'reason': str(e), **settings}
  # Read what to keep only now, so runs into one --out that overlap in time keep each other's.
  kept = report.kept_results(ctx.out / 'reproduce.json', opts.quick, list(EXPERIMENTS)) if opts.only else {}
  results = {e: results.get(e, kept.get(e)) for e in EXPERIMENTS if e in results or e in kept}
  opt_dict = {k: (list(v) if isinstance(v, tuple) else v)
              for k, v in dataclasses.asdict(opts).items()}
  summary = {'command': opts.command, 'options': opt_dict, 'device': jax.devices()[0].device_kind,
             'jax_version': jax.__version__, 'wall_seconds': round(time.time() - t_start, 1),
             'experiments': results}
  report.write_summary(ctx.out, summary, {n: e.title for n, e in EXPERIMENTS.items()})
  summary['out'] = str(ctx.out)
  return summary
