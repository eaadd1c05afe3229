"""Operating points of SCALE-UP's label-only scores on the zoo models.

* :mod:`~scaleup_jax.operating_points.experiment` -- runs
  :func:`scaleup_jax.evaluate.evaluate_detection` on each model with every
  label-only score, thresholds calibrated to false-positive budgets
  (:mod:`scaleup_jax.calibration`), and collects the results.
* :mod:`~scaleup_jax.operating_points.plots` -- TPR against the FPR budget.
* :mod:`~scaleup_jax.operating_points.report` -- Markdown tables.

``python -m eval.operating_points`` runs all three; see ``docs/method.md``.
"""

from scaleup_jax.operating_points.experiment import (OperatingPointsConfig, default_models,
                                                     run_operating_points)

__all__ = ['OperatingPointsConfig', 'default_models', 'run_operating_points']
