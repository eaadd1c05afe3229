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

The SCALE-UP data-limited standardisation is not part of the ``scaleup``
entry (its score is the data-free SPC); apply
:func:`scaleup_jax.scaleup.fit_class_stats` on top as ``evaluate`` does.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax

from scaleup_jax import scaleup
from scaleup_jax.baselines import (common, deepsweep, frequency, ibd_psc, shrinkpad, strip,
                                   teco)
from scaleup_jax.baselines.common import Detector
from scaleup_jax.validation import InputError, check_scales


def make_scaleup(apply_fn: Callable, variables=None, *, key=None, benign_images=None,
                 benign_labels=None, scales: Sequence[float] = scaleup.DEFAULT_SCALES,
                 method: str = 'vmap') -> Detector:
  """SCALE-UP as a :class:`Detector`: scores are the data-free SPC.

  Wraps :func:`scaleup_jax.scaleup.scaleup_detect`; ``variables``,
  ``benign_images``, ``benign_labels`` and ``key`` are unused.
  """
  del variables, benign_images, benign_labels
  scales = tuple(float(s) for s in check_scales(scales))
  if method not in scaleup.METHODS:
    raise InputError(f'unknown method {method!r}; expected one of {scaleup.METHODS}')
  key = jax.random.key(0) if key is None else common.default_key(key)
  core = jax.jit(lambda v, x, k, aux: scaleup.scaleup_detect(apply_fn, v, x, scales, method))
  return Detector(name='scaleup', core=core, aux=None, key=key, needs='labels',
                  model_forwards=1 + len(scales),
                  config={'scales': list(scales), 'method': method, 'score': 'SPC'})


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
  """

  factory: Callable
  needs: str
  needs_benign: bool
  needs_variables: bool
  paper: str


SPECS: dict[str, DetectorSpec] = {
    'scaleup': DetectorSpec(make_scaleup, 'labels', False, False,
                            'Guo et al., ICLR 2023 (SCALE-UP)'),
    'strip': DetectorSpec(strip.make, 'probabilities', True, False,
                          'Gao et al., ACSAC 2019 (STRIP)'),
    'shrinkpad': DetectorSpec(shrinkpad.make, 'labels', False, False,
                              'Li et al., ICLR-W 2021 (ShrinkPad)'),
    'deepsweep': DetectorSpec(deepsweep.make, 'labels', False, False,
                              'Qiu et al., AsiaCCS 2021 (DeepSweep)'),
    'frequency': DetectorSpec(frequency.make, 'none', True, False,
                              'Zeng et al., ICCV 2021 (Frequency)'),
    'ibd_psc': DetectorSpec(ibd_psc.make, 'parameters', True, True,
                            'Hou et al., ICML 2024 (IBD-PSC)'),
    'teco': DetectorSpec(teco.make, 'labels', False, False, 'Liu et al., CVPR 2023 (TeCo)'),
}
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
  import inspect
  params = inspect.signature(s.factory).parameters
  unknown = sorted(k for k in options if k not in params)
  if unknown:
    allowed = [k for k, p in params.items() if p.kind == p.KEYWORD_ONLY or p.default is not p.empty]
    allowed = [k for k in allowed if k not in ('key', 'benign_images', 'benign_labels', 'variables')]
    raise InputError(f'detector {name!r} has no option(s) {unknown}; its options: {allowed}')
  return s.factory(apply_fn, variables, key=common.default_key(key), benign_images=benign_images,
                   benign_labels=benign_labels, **options)


def describe() -> str:
  """A table of the registered detectors and what they need."""
  rows = [f'{"name":<11}{"access":<15}{"benign":<8}{"white-box":<11}paper']
  for n, s in SPECS.items():
    rows.append(f'{n:<11}{s.needs:<15}{"yes" if s.needs_benign else "no":<8}'
                f'{"yes" if s.needs_variables else "no":<11}{s.paper}')
  return '\n'.join(rows)
