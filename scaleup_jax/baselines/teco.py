"""TeCo: deviation of corruption robustness across corruption types.

For each corruption type ``t`` (of ``T``) and severity ``s = 1..S`` (S = 5),
the suspect model classifies the corrupted input; ``first_t(x)`` is the
lowest severity at which the prediction differs from the prediction on the
clean input, or ``S + 1`` if it never does. Benign inputs lose their label at
similar severities across corruption types, while a trigger is robust to
some corruptions and fragile to others, so the spread is larger:

    score(x) = std_t first_t(x)         (population std, as the authors' np.std)

Defaults (paper and authors' code, CGCL-codes/TeCo): severities 1..5 per
type, each applied to the *clean* input, never-flip counted as 6, score is
the standard deviation over types. The corruption list is
:data:`~scaleup_jax.baselines.corruptions.CORRUPTIONS` (12 of the paper's 15
``imagecorruptions`` types, with CIFAR-10-C parameters; snow, frost and
elastic transform are missing and glass blur, fog and motion blur are
approximations; see that module). Needs: hard labels only (black box); no
benign data. Cost: ``1 + 5 T`` forward passes per image (61 by default).

Note: the authors' script corrupts its image array in place, so in their run
each severity is applied on top of the previous ones; we follow the paper's
description (each severity on the clean image).

References:
  Liu, Li, Wang, Hu, Ye, Jin, Wu, Xiao. "Detecting Backdoors During the
  Inference Stage Based on Corruption Robustness Consistency". CVPR 2023.
  https://arxiv.org/abs/2303.18191
"""

from __future__ import annotations

from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp

from scaleup_jax.baselines import common, corruptions
from scaleup_jax.validation import InputError

DEFAULT_CORRUPTIONS = tuple(corruptions.CORRUPTIONS)
DEFAULT_CHUNK = 10
S = corruptions.NUM_SEVERITIES


def check_corruptions(names: Sequence[str]) -> tuple[str, ...]:
  names = tuple(names)
  bad = [n for n in names if n not in corruptions.CORRUPTIONS]
  if bad or len(names) < 2:
    raise InputError(f'TeCo needs >= 2 known corruption types; got {list(names)} '
                     f'(unknown: {bad}); expected a subset of {sorted(corruptions.CORRUPTIONS)}')
  return names


def corrupted_stack(key, images, names: Sequence[str] = DEFAULT_CORRUPTIONS):
  """``(T * S, B, H, W, C)``: type-major, severity-minor corrupted copies of ``images``."""
  chex.assert_rank(images, 4)
  keys = jax.random.split(common.fast_key(key), len(names))
  out = [corruptions.corrupt_all(k, images, name) for k, name in zip(keys, names)]
  return jnp.concatenate(out)


def first_flip(labels, preds):
  """First severity (1-based) whose label differs from ``preds``; ``S + 1`` if none.

  Args:
    labels: ``(T, S, B)`` labels of the corrupted copies.
    preds: ``(B,)`` labels of the clean inputs.

  Returns:
    int32 ``(T, B)`` in ``1..S+1``.

  Example:
    >>> first_flip(jnp.array([[[1], [1], [2]]]), jnp.array([1]))  # T=1, S=3
    Array([[3]], dtype=int32)
  """
  chex.assert_rank(labels, 3)
  flips = labels != preds[None, None, :]
  num_sev = labels.shape[1]
  return jnp.where(flips.any(axis=1), jnp.argmax(flips, axis=1) + 1, num_sev + 1).astype(jnp.int32)


def teco_scores(apply_fn: Callable, variables, images, key,
                names: Sequence[str] = DEFAULT_CORRUPTIONS, chunk: int | None = DEFAULT_CHUNK):
  """TeCo on one batch.

  Args:
    apply_fn: ``(variables, images) -> logits``.
    variables: the model's variables.
    images: ``(B, H, W, C)`` in [0, 1].
    key: PRNG key of the random corruptions.
    names: corruption types (static).
    chunk: corrupted batches classified at once (``chunk * B`` images).

  Returns:
    ``(preds, scores)``: int32 ``(B,)`` and float32 ``(B,)`` standard
    deviation of the first-flip severity across types.
  """
  b = images.shape[0]
  preds = common.predict_labels(apply_fn, variables, images)
  labels = common.labels_of_stack(apply_fn, variables, corrupted_stack(key, images, names), chunk)
  first = first_flip(labels.reshape(len(names), S, b), preds)  # (T, B)
  return preds, jnp.std(first.astype(jnp.float32), axis=0)


def make(apply_fn: Callable, variables=None, *, key, benign_images=None, benign_labels=None,
         corruption_types: Sequence[str] = DEFAULT_CORRUPTIONS,
         chunk: int | None = DEFAULT_CHUNK) -> common.Detector:
  """Builds a TeCo :class:`~scaleup_jax.baselines.common.Detector`.

  Args:
    apply_fn: ``(variables, images) -> logits``.
    variables, benign_images, benign_labels: unused (black box, data-free).
    key: default PRNG key of the random corruptions (noise, blur angles).
    corruption_types: names from
      :data:`~scaleup_jax.baselines.corruptions.CORRUPTIONS` (default: all 12).
    chunk: corrupted batches per model call.
  """
  del variables, benign_images, benign_labels
  key = common.default_key(key)
  names = check_corruptions(corruption_types)
  if chunk is not None:
    chunk = common.check_positive_int('chunk', chunk)
  core = jax.jit(lambda v, x, k, aux: teco_scores(apply_fn, v, x, k, names, chunk))
  return common.Detector(
      name='teco', core=core, aux=None, key=key, needs='labels',
      model_forwards=1 + S * len(names),
      config={'corruptions': list(names), 'severities': S, 'never_flip_value': S + 1,
              'score': 'population std of the first-flip severity across corruption types'})
