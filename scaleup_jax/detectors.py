"""Registry of input-level backdoor detectors: SCALE-UP and the baselines by name.

    det = detectors.make('strip', run.apply_fn, run.variables, key=jax.random.key(0),
                         benign_images=defender_images)
    preds, scores = det(run.variables, images)          # higher = more likely poisoned
    preds, scores = scaleup.detect_batched(det, images, 256, run.variables)

Every detector is a :class:`~scaleup_jax.baselines.common.Detector`: a jitted,
pure ``(variables, images[, key]) -> (preds, scores)`` plus metadata
(``needs``, ``model_forwards``, ``detector_forwards``, ``config``).

What each needs (``SPECS[name]``):

==========  ==============  =============  ===============================
name        model access    benign images  variables at build time
==========  ==============  =============  ===============================
scaleup     labels          no             no
strip       probabilities   yes            no
shrinkpad   labels          no             no
deepsweep   labels          no             no
frequency   none            yes            no
ibd_psc     parameters      yes            yes (BN layers, layer choice)
teco        labels          no             no
==========  ==============  =============  ===============================

Detectors with several scores or a fitted step declare them (see
:class:`~scaleup_jax.baselines.common.Detector`): SCALE-UP's data-limited mode is
its own ``fit``/``score``, so callers treat every entry alike:

    lm = scaleup.detect_batched(lambda x: det.raw(variables, x), images, 256)
    preds, scores = det.score(lm, det.fit(lm_defense, labels_defense, num_classes))
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from scaleup_jax import scaleup
from scaleup_jax.baselines import (common, deepsweep, frequency, ibd_psc, shrinkpad, strip,
                                   teco)
from scaleup_jax.baselines.common import Detector
from scaleup_jax.validation import InputError, check_scales


SCALEUP_MODES = scaleup.CONSISTENCY_MODES


def make_scaleup(apply_fn: Callable, variables=None, *, key=None, benign_images=None,
                 benign_labels=None, scales: Sequence[float] = scaleup.DEFAULT_SCALES,
                 dense_scales: Sequence[float] = (), method: str = 'auto',
                 data_limited_form: str = 'standardised', group_by: str = 'predicted') -> Detector:
  """SCALE-UP as a :class:`Detector` with its three modes.

  The core is the label matrix on ``query_grid(scales, dense_scales)``
  (:func:`scaleup_jax.scaleup.make_label_matrix_fn`, compiled once per batch
  shape); every score is read from it on the host:

  * ``'data-free'``: SPC on ``scales`` (paper Eq. 1-2); also ``det(v, x)``'s score.
  * ``'data-limited'``: SPC standardised by the per-class statistics that
    :meth:`Detector.fit` learns from the defender's label matrices (Eq. 3-4;
    ``data_limited_form`` and ``group_by`` as in
    :func:`scaleup_jax.scaleup.data_limited_scores` and ``fit_class_stats``).
  * ``'data-limited-global'``: one global mean/std (a monotone map of SPC).

  Args:
    apply_fn: ``(variables, images (B, H, W, C) in [0, 1]) -> logits (B, K)``.
    variables, key, benign_images, benign_labels: unused (the statistics are
      fitted from label matrices, see :meth:`Detector.fit`).
    scales: the paper's scale set ``S``.
    dense_scales: extra factors for the finer label-only scores of
      :mod:`scaleup_jax.calibration` (``()``: none).
    method: ``'vmap'``, ``'map'`` or ``'auto'`` (chosen per batch size,
      :func:`scaleup_jax.scaleup.resolve_method`).

  Returns:
    A :class:`Detector` whose ``raw`` outputs are int32 label matrices ``(B, 1 + F)``.

  Example:
    >>> det = make('scaleup', run.apply_fn, key=0)
    >>> lm = scaleup.detect_batched(lambda x: det.raw(run.variables, x), images, 256)
    >>> preds, scores = det.score(lm, det.fit(lm_defense, labels_defense, 10))
  """
  del variables, benign_images, benign_labels
  scales = tuple(sorted(float(s) for s in check_scales(scales)))
  grid = scaleup.query_grid(scales, dense_scales) if len(dense_scales) else scaleup.check_factors(scales)
  scaleup.resolve_method(method, 1)  # an unknown method fails here
  if data_limited_form not in scaleup.DATA_LIMITED_FORMS:
    raise InputError(f'unknown data_limited_form {data_limited_form!r}; expected one of '
                     f'{scaleup.DATA_LIMITED_FORMS}')
  if group_by not in scaleup.GROUP_BY:
    raise InputError(f'unknown group_by {group_by!r}; expected one of {scaleup.GROUP_BY}')
  key = jax.random.key(0) if key is None else common.default_key(key)
  labels = scaleup.make_label_matrix_fn(apply_fn, grid, method)
  cols = np.asarray([0] + [grid.index(s) + 1 for s in scales])

  def head(lm):
    return lm[:, 0], scaleup.spc_from_labels(lm[:, cols])

  def fit(d_lm, d_labels, num_classes):
    return scaleup.fit_consistency(np.asarray(d_lm)[:, cols], num_classes, labels=d_labels,
                                   group_by=group_by)

  def score(lm, stats):
    return scaleup.consistency_scores(np.asarray(lm)[:, cols], stats, data_limited_form)

  def describe(stats):
    return {'data_limited_form': data_limited_form,
            'class_stats': {'mean': stats.mean.tolist(), 'std': stats.std.tolist(),
                            'count': stats.count.tolist(), 'min_std': stats.min_std,
                            'balance': stats.balance, 'group_by': stats.group_by}}

  core = jax.jit(lambda v, x, k, aux: labels(v, x))  # one compilation per batch shape
  return Detector(name='scaleup', core=core, aux=None, key=key,
                  needs='labels', model_forwards=1 + len(scales),
                  config={'scales': list(scales), 'method': method, 'score': 'SPC',
                          'grid': list(grid), 'data_limited_form': data_limited_form,
                          'group_by': group_by},
                  modes=SCALEUP_MODES, head=head, fit_fn=fit, score_fn=score,
                  fitted_modes=SCALEUP_MODES[1:], describe_state=describe,
                  outputs='label_matrix')


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
  """How to build one detector and what it needs.

  Attributes:
    factory: ``(apply_fn, variables=None, *, key, benign_images=None,
      benign_labels=None, **options) -> Detector``.
    needs: model access of the score (see :data:`common.ACCESS`).
    needs_benign: the factory requires the defender's benign images.
    needs_variables: the factory requires the trained variables.
    paper: short reference.
    title: the detector's name in tables and reports.
    modes: its score modes (``()``: one, named after the registry entry); the
      built :class:`Detector` has the same ``score_modes``.
    table_modes: the modes that get a column in comparison tables (``()``: all).
  """

  factory: Callable
  needs: str
  needs_benign: bool
  needs_variables: bool
  paper: str
  title: str
  modes: tuple = ()
  table_modes: tuple = ()

  def option_names(self) -> tuple:
    """The detector-specific keyword options its factory takes."""
    import inspect
    params = inspect.signature(self.factory).parameters
    return tuple(k for k, p in params.items()
                 if (p.kind == p.KEYWORD_ONLY or p.default is not p.empty)
                 and k not in ('key', 'benign_images', 'benign_labels', 'variables'))


SPECS: dict[str, DetectorSpec] = {
    'scaleup': DetectorSpec(make_scaleup, 'labels', False, False,
                            'Guo et al., ICLR 2023 (SCALE-UP)', 'SCALE-UP', SCALEUP_MODES,
                            SCALEUP_MODES[:2]),
    'strip': DetectorSpec(strip.make, 'probabilities', True, False,
                          'Gao et al., ACSAC 2019 (STRIP)', 'STRIP'),
    'shrinkpad': DetectorSpec(shrinkpad.make, 'labels', False, False,
                              'Li et al., ICLR-W 2021 (ShrinkPad)', 'ShrinkPad'),
    'deepsweep': DetectorSpec(deepsweep.make, 'labels', False, False,
                              'Qiu et al., AsiaCCS 2021 (DeepSweep)', 'DeepSweep'),
    'frequency': DetectorSpec(frequency.make, 'none', True, False,
                              'Zeng et al., ICCV 2021 (Frequency)', 'Frequency'),
    'ibd_psc': DetectorSpec(ibd_psc.make, 'parameters', True, True,
                            'Hou et al., ICML 2024 (IBD-PSC)', 'IBD-PSC'),
    'teco': DetectorSpec(teco.make, 'labels', False, False, 'Liu et al., CVPR 2023 (TeCo)',
                         'TeCo'),
}
DEFAULT = 'scaleup'
NAMES = tuple(SPECS)
ALIASES = {'scale-up': 'scaleup', 'ibd-psc': 'ibd_psc', 'ibdpsc': 'ibd_psc'}


def canonical_name(name: str) -> str:
  """Registry name of ``name`` (case-insensitive, '-' and '_' aliases); ValueError if unknown."""
  key = str(name).strip().lower()
  key = ALIASES.get(key, key)
  if key not in SPECS:
    raise InputError(f'unknown detector {name!r}; known detectors: {", ".join(NAMES)}')
  return key


def spec(name: str) -> DetectorSpec:
  """The :class:`DetectorSpec` of ``name``."""
  return SPECS[canonical_name(name)]


def make(name: str, apply_fn: Callable, variables=None, *, key, benign_images=None,
         benign_labels=None, **options) -> Detector:
  """Builds detector ``name`` for the model ``apply_fn``.

  Args:
    name: one of :data:`NAMES` (aliases 'scale-up', 'ibd-psc').
    apply_fn: ``(variables, images (B, H, W, C) in [0, 1]) -> logits (B, K)``.
    variables: the trained variables; required by ``ibd_psc`` (white box),
      ignored by the others (they take variables at call time only).
    key: PRNG key (or int seed) for the detector's randomness: overlay choice
      (STRIP), pad offsets (ShrinkPad), training (Frequency), corruption noise
      (TeCo). Required, for reproducibility.
    benign_images: ``(M, H, W, C)`` defender images in [0, 1], disjoint from the
      evaluated ones; required by strip, frequency and ibd_psc.
    benign_labels: ``(M,)`` their labels (ibd_psc's layer choice; optional).
    **options: detector-specific options (see each module's ``make``), e.g.
      ``scales`` for scaleup, ``num_overlays`` for strip, ``steps`` for
      frequency, ``omega``/``n``/``xi`` for ibd_psc.

  Returns:
    A :class:`Detector`; call it as ``det(variables, images) -> (preds, scores)``.

  Raises:
    ValueError (InputError): unknown name, or a required input missing.
  """
  name = canonical_name(name)
  s = SPECS[name]
  if s.needs_benign and benign_images is None and not options.get('state') \
      and options.get('start') is None:
    raise InputError(f'detector {name!r} needs the defender\'s benign images (benign_images=...)')
  if s.needs_variables and variables is None:
    raise InputError(f'detector {name!r} is white-box: pass the trained variables')
  if key is None:
    raise InputError('a PRNG key is required (key=jax.random.key(seed) or an int seed)')
  allowed = s.option_names()
  unknown = sorted(k for k in options if k not in allowed)
  if unknown:
    raise InputError(f'detector {name!r} has no option(s) {unknown}; its options: {list(allowed)}')
  return s.factory(apply_fn, variables, key=common.default_key(key), benign_images=benign_images,
                   benign_labels=benign_labels, **options)


def modes(name: str) -> tuple:
  """The score modes of detector ``name`` (as its built :class:`Detector` names them)."""
  s = spec(name)
  return tuple(s.modes) or (canonical_name(name),)


def table_columns(name: str) -> list[tuple[str, str, str]]:
  """``(column title, detector, mode)`` of ``name`` in comparison tables.

  One column titled with the registry name for a single-score detector; one per
  table mode, ``'<title> (<mode>)'``, otherwise (``'SCALE-UP (data-free)'``).
  """
  n, s = canonical_name(name), spec(name)
  picked = tuple(s.table_modes) or modes(n)
  if picked == (n,):
    return [(n, n, n)]
  return [(f'{s.title} ({m})', n, m) for m in picked]


def select_modes(name: str, mode: str) -> tuple:
  """The modes of ``name`` that ``mode`` asks for: ``'both'``/``'all'`` = every mode, else
  the mode itself and its variants (``'data-limited'`` -> ``'data-limited'``,
  ``'data-limited-global'``); InputError naming the detector's modes if none matches.
  """
  have = modes(name)
  if mode in ('both', 'all'):
    return have
  picked = tuple(m for m in have if m == mode or m.startswith(mode + '-'))
  if not picked:
    raise InputError(f'detector {canonical_name(name)!r} has no mode {mode!r}; its modes: '
                     f'{list(have)} (or "both" for all)')
  return picked


def describe() -> str:
  """A table of the registered detectors and what they need."""
  rows = [f'{"name":<11}{"access":<15}{"benign":<8}{"white-box":<11}paper']
  for n, s in SPECS.items():
    rows.append(f'{n:<11}{s.needs:<15}{"yes" if s.needs_benign else "no":<8}'
                f'{"yes" if s.needs_variables else "no":<11}{s.paper}')
  return '\n'.join(rows)
