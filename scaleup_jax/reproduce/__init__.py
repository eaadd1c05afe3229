"""CPU-scale reproduction of the SCALE-UP paper's evaluation on existing run directories.

``reproduce(opts)`` runs the experiments of :data:`EXPERIMENTS` (all, or those
in ``opts.only``) on models that are already trained (the zoo, or any run
directories) and writes their numbers, tables and figures under ``opts.out``.
The package is split by concern, as :mod:`scaleup_jax.theory` is:

* :mod:`.experiments` -- the computations: options, the shared
  :class:`Context` (evaluation sets and label matrices cached per model), the
  statistics (:func:`bootstrap_auroc`, :func:`slice_label_matrix`), the model
  queries, and one function ``f(ctx) -> Outcome`` per experiment. Numbers only.
* :mod:`.plots` -- one figure per experiment, from its outcome.
* :mod:`.report` -- one markdown table per experiment, ``summary.md`` and
  ``reproduce.json``.
* :mod:`.run` -- :data:`EXPERIMENTS`, the one registry (title, compute, table,
  figure per name), and the driver :func:`reproduce`.

``python -m eval.reproduce`` runs it; see ``docs/reproduction.md``.

Example:
  >>> from scaleup_jax import reproduce
  >>> summary = reproduce.reproduce(reproduce.ReproduceOptions(
  ...     quick=True, ckpt='runs/x', clean_ckpt='runs/y', out='/tmp/r'))  # doctest: +SKIP
  >>> summary['experiments']['table1']['status']                        # doctest: +SKIP
  'ok'

References:
  Guo, Li, Chen, Guo, Sun, Liu. "SCALE-UP: An Efficient Black-box Input-level
  Backdoor Detection via Analyzing Scaled Prediction Consistency". ICLR 2023.
  https://arxiv.org/abs/2302.03251
"""

from scaleup_jax.reproduce.experiments import (ADAPTIVE_CKPT, ALL_SCALES, CLEAN_CKPT,
                                               DEFAULT_SCALES, FIG2_FACTORS, PAPER_ADAPTIVE_AUROC,
                                               PAPER_AUROC, PAPER_NOTE, SCALE_SETS,
                                               SWEEP_BASE_RATE, SWEEP_BASE_SIZE, SWEEP_TARGET,
                                               SWEEPS, ZOO, Context, Outcome, ReproduceOptions,
                                               Skipped,
                                               bootstrap_auroc, label_matrix, noise_label_matrix,
                                               paper_side_by_side, scaled_confidences,
                                               slice_label_matrix, sweep_models)
from scaleup_jax.reproduce.report import paper_table_lines, summary_markdown
from scaleup_jax.reproduce.run import EXPERIMENTS, Experiment, render, reproduce, resolve_options

__all__ = [
    'ADAPTIVE_CKPT', 'ALL_SCALES', 'CLEAN_CKPT', 'DEFAULT_SCALES', 'EXPERIMENTS', 'FIG2_FACTORS',
    'PAPER_ADAPTIVE_AUROC', 'PAPER_AUROC', 'PAPER_NOTE', 'SCALE_SETS', 'SWEEP_BASE_RATE',
    'SWEEP_BASE_SIZE', 'SWEEP_TARGET', 'SWEEPS', 'ZOO', 'Context', 'Experiment', 'Outcome',
    'ReproduceOptions', 'Skipped', 'bootstrap_auroc', 'label_matrix', 'noise_label_matrix',
    'paper_side_by_side',
    'paper_table_lines', 'render', 'reproduce', 'resolve_options', 'scaled_confidences',
    'slice_label_matrix', 'summary_markdown', 'sweep_models',
]
