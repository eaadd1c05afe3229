"""ShrinkPad as a detector: prediction inconsistency under random shrink-and-pad.

ShrinkPad is a pre-processing defence: shrink the image by ``shrink`` pixels
(bilinear resize to ``(H - shrink, W - shrink)``) and zero-pad it back to
``H x W`` at a random offset, which misaligns a location-sensitive trigger.
As a detector (the form SCALE-UP compares against), an input is scored by how
often its prediction changes under ``P`` independent random pads:

    score(x) = (1/P) sum_j [ C(ShrinkPad_j(x)) != C(x) ].

Poisoned inputs whose trigger is disrupted flip (score near 1); benign inputs
mostly keep their label. (The opposite direction, triggers that survive, is
SCALE-UP's argument; for ShrinkPad the paper's premise is that they do not.)

Defaults and sources:
  * ``shrink = 4`` pixels in total for 32x32 images, with top/left padding
    drawn uniformly from ``{0, ..., shrink}`` and the rest at the
    bottom/right: BackdoorBox's ``ShrinkPad(size_map=32, pad=4)``
    (``Resize(28)`` then one of the 25 ``Pad(i, j, 4 - i, 4 - j)``).
    A symmetric reading ("pad ``p`` on each side", i.e. resize to
    ``H - 2p``) is ``shrink = 2p``.
  * ``P = 5`` random pads: our choice (the paper applies one pad as
    pre-processing); five matches SCALE-UP's query budget.
  * Resize: ``jax.image.resize(..., 'bilinear')``, antialiased when shrinking
    (as torchvision's PIL path is).

Needs: hard labels only (black box). No benign data.

References:
  Li, Zhai, Wu, Jiang, Li, Xia. "Backdoor Attack in the Physical World".
  ICLR 2021 Workshop on Robust and Reliable ML. https://arxiv.org/abs/2104.02361
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from scaleup_jax.baselines import common, image_ops

DEFAULT_SHRINK = 4
DEFAULT_NUM_PADS = 5


def random_offsets(key, num_pads: int, batch: int, shrink: int):
  """int32 ``(num_pads, batch, 2)`` top/left pads, uniform in ``{0..shrink}``."""
  return jax.random.randint(key, (num_pads, batch, 2), 0, shrink + 1, dtype=jnp.int32)


def shrinkpad_scores(apply_fn: Callable, variables, images, key, shrink: int = DEFAULT_SHRINK,
                     num_pads: int = DEFAULT_NUM_PADS):
  """ShrinkPad inconsistency on one batch.

  Args:
    apply_fn: ``(variables, images) -> logits``.
    variables: the model's variables.
    images: ``(B, H, W, C)`` in [0, 1].
    key: PRNG key for the pad offsets (fresh offsets per image and per pad).
    shrink: pixels removed per spatial side length (static).
    num_pads: P, random pads per image (static).

  Returns:
    ``(preds, scores)``: int32 ``(B,)`` and float32 ``(B,)`` in
    ``{0, 1/P, ..., 1}``.
  """
  chex.assert_rank(images, 4)
  b = images.shape[0]
  preds = common.predict_labels(apply_fn, variables, images)
  offsets = random_offsets(key, num_pads, b, shrink)
  padded = jax.vmap(lambda off: image_ops.shrink_pad(images, off, shrink))(offsets)
  labels = common.labels_of_stack(apply_fn, variables, padded)  # (P, B)
  return preds, common.inconsistency(labels, preds)


def make(apply_fn: Callable, variables=None, *, key, benign_images=None, benign_labels=None,
         shrink: int = DEFAULT_SHRINK, num_pads: int = DEFAULT_NUM_PADS) -> common.Detector:
  """Builds a ShrinkPad :class:`~scaleup_jax.baselines.common.Detector`.

  Args:
    apply_fn: ``(variables, images) -> logits``.
    variables, benign_images, benign_labels: unused (black box, data-free).
    key: default PRNG key for the pad offsets.
    shrink: pixels removed per side length (default 4).
    num_pads: random pads per image (default 5).
  """
  del variables, benign_images, benign_labels
  key = common.default_key(key)
  num_pads = common.check_positive_int('num_pads', num_pads)
  shrink = common.check_positive_int('shrink', shrink)
  core = jax.jit(lambda v, x, k, aux: shrinkpad_scores(apply_fn, v, x, k, shrink, num_pads))
  return common.Detector(
      name='shrinkpad', core=core, aux=None, key=key, needs='labels',
      model_forwards=1 + num_pads,
      config={'shrink': shrink, 'num_pads': num_pads, 'resize': 'bilinear (antialiased)',
              'score': 'fraction of pads that change the prediction'})
