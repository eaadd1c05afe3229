"""DeepSweep-style detector: prediction inconsistency under input transformations.

DeepSweep studies 71 data-augmentation functions in eight families (affine
transformations, filters, colour shifts, compression, ...) and mitigates
backdoors by fine-tuning the model with an augmentation policy and
transforming every input at inference. As an input-level *detector* (the
form used in SCALE-UP's comparison) an input is scored by how many of a fixed
set of prediction-preserving transformations change its prediction, since a
trigger that the transformations break flips a poisoned prediction:

    score(x) = (1/T) sum_t [ C(t(x)) != C(x) ].

The transformation set (:data:`TRANSFORMS`, all deterministic, one member of
each main family of the paper):

  ``median_3x3``     median filter, 3x3 window (reflect border)
  ``average_3x3``    mean filter, 3x3 window
  ``gaussian_blur``  Gaussian blur, sigma = 1 pixel
  ``translate``      shift by (+3, +3) pixels, zero fill
  ``rotate``         rotation by 10 degrees about the centre, zero fill
  ``downup_2x``      bilinear downscale to half size and back up
  ``jpeg_q50``       JPEG-like round trip at quality 50 (see
                     :func:`~scaleup_jax.baselines.image_ops.jpeg_like`)

Deviations from the paper: no fine-tuning stage (the suspect model is used as
is, so the detector stays input-level), and this fixed set of seven
transformations with the parameters above is ours, not the paper's searched
policy. Needs: hard labels only (black box); no benign data.

References:
  Qiu, Zeng, Chen, Qiu, Guo, Yang. "DeepSweep: An Evaluation Framework for
  Mitigating DNN Backdoor Attacks using Data Augmentation". ASIA CCS 2021.
  https://arxiv.org/abs/2012.07006
"""

from __future__ import annotations

from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp

from scaleup_jax.baselines import common, image_ops
from scaleup_jax.validation import InputError


def _downup(images, factor: int = 2):
  b, h, w, c = images.shape
  small = jax.image.resize(images, (b, max(1, h // factor), max(1, w // factor), c), 'bilinear')
  return jax.image.resize(small, images.shape, 'bilinear')


TRANSFORMS: dict[str, Callable] = {
    'median_3x3': lambda x: image_ops.median_filter(x, 3),
    'average_3x3': lambda x: image_ops.box_filter(x, 3),
    'gaussian_blur': lambda x: image_ops.gaussian_blur(x, 1.0),
    'translate': lambda x: image_ops.affine_warp(x, shift=(3.0, 3.0)),
    'rotate': lambda x: image_ops.affine_warp(x, angle_deg=10.0),
    'downup_2x': _downup,
    'jpeg_q50': lambda x: image_ops.jpeg_like(x, 50),
}
DEFAULT_TRANSFORMS = tuple(TRANSFORMS)


def check_transforms(names: Sequence[str]) -> tuple[str, ...]:
  names = tuple(names)
  bad = [n for n in names if n not in TRANSFORMS]
  if bad or not names:
    raise InputError(f'unknown or empty DeepSweep transforms {bad or names}; '
                     f'expected a non-empty subset of {sorted(TRANSFORMS)}')
  return names


def transform_stack(images, names: Sequence[str] = DEFAULT_TRANSFORMS):
  """``(T, B, H, W, C)``: every transformation of ``names`` applied to ``images``."""
  chex.assert_rank(images, 4)
  return jnp.stack([jnp.clip(TRANSFORMS[n](images), 0.0, 1.0) for n in names])


def deepsweep_scores(apply_fn: Callable, variables, images,
                     transforms: Sequence[str] = DEFAULT_TRANSFORMS, chunk: int | None = None):
  """Fraction of transformations that change the prediction, on one batch.

  Args:
    apply_fn: ``(variables, images) -> logits``.
    variables: the model's variables.
    images: ``(B, H, W, C)`` in [0, 1].
    transforms: names from :data:`TRANSFORMS` (static).
    chunk: transformed batches classified at once (None: all).

  Returns:
    ``(preds, scores)``: int32 ``(B,)`` and float32 ``(B,)`` in
    ``{0, 1/T, ..., 1}``.
  """
  preds = common.predict_labels(apply_fn, variables, images)
  labels = common.labels_of_stack(apply_fn, variables, transform_stack(images, transforms), chunk)
  return preds, common.inconsistency(labels, preds)


def make(apply_fn: Callable, variables=None, *, key=None, benign_images=None, benign_labels=None,
         transforms: Sequence[str] = DEFAULT_TRANSFORMS,
         chunk: int | None = None) -> common.Detector:
  """Builds a DeepSweep-style :class:`~scaleup_jax.baselines.common.Detector`.

  Args:
    apply_fn: ``(variables, images) -> logits``.
    variables, benign_images, benign_labels: unused (black box, data-free).
    key: unused (the transformations are deterministic); accepted for a
      uniform interface.
    transforms: subset of :data:`TRANSFORMS` (default: all seven).
    chunk: transformed batches per model call (None: all at once).
  """
  del variables, benign_images, benign_labels
  names = check_transforms(transforms)
  key = jax.random.key(0) if key is None else common.default_key(key)
  core = jax.jit(lambda v, x, k, aux: deepsweep_scores(apply_fn, v, x, names, chunk))
  return common.Detector(
      name='deepsweep', core=core, aux=None, key=key, needs='labels',
      model_forwards=1 + len(names),
      config={'transforms': list(names),
              'score': 'fraction of transformations that change the prediction'})
