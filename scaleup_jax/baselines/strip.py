"""STRIP: entropy of predictions on superimposed inputs.

The input ``x`` is superimposed with ``N`` benign images ``b_1..b_N`` held by the
defender. A trigger keeps dominating the prediction of every blend, so a
poisoned input's blends are classified confidently (low entropy); a benign
input's blends are ambiguous (high entropy). With ``p_i`` the softmax of the
``i``-th blend,

    H(x) = (1/N) sum_i  -sum_k p_ik log2 p_ik,     score(x) = -H(x),

negated so that a higher score means "more likely poisoned" (the paper flags
``H(x)`` below a threshold picked at a target FRR on benign inputs).

Blend: ``clip(x + b, 0, 1)``, the pixel-wise sum saturated at white. This is
what the authors' code does (OpenCV ``addWeighted(x, 1, b, 1, 0)`` on uint8
images, which saturates at 255). Some re-implementations average instead
(``0.5 x + 0.5 b``); pass ``alpha=0.5, beta=0.5`` for that.

Defaults (paper): ``N = 100`` overlays drawn from the defender's held-out
benign images. Needs: softmax probabilities of the suspect model and the
defender's benign images.

References:
  Gao, Xu, Wang, Chen, Ranasinghe, Nepal. "STRIP: A Defence Against Trojan
  Attacks on Deep Neural Networks". ACSAC 2019. https://arxiv.org/abs/1902.06531
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from scaleup_jax.baselines import common

DEFAULT_NUM_OVERLAYS = 100
DEFAULT_CHUNK = 10


def superimpose(images, overlay, alpha: float = 1.0, beta: float = 1.0):
  """``clip(alpha * images + beta * overlay, 0, 1)``; ``overlay`` broadcasts over the batch."""
  return jnp.clip(alpha * images + beta * overlay, 0.0, 1.0)


def strip_scores(apply_fn: Callable, variables, images, overlays, alpha: float = 1.0,
                 beta: float = 1.0, chunk: int | None = DEFAULT_CHUNK):
  """STRIP on one batch: predictions and negative mean entropy.

  Args:
    apply_fn: ``(variables, images (B, H, W, C)) -> logits (B, K)``.
    variables: the model's variables.
    images: ``(B, H, W, C)`` in [0, 1].
    overlays: ``(N, H, W, C)`` benign images in [0, 1].
    alpha, beta: blend weights of the input and the overlay (static).
    chunk: overlays evaluated at once (``chunk * B`` images in flight); None:
      all ``N`` at once.

  Returns:
    ``(preds, scores)``: int32 ``(B,)`` and float32 ``(B,)`` with
    ``score = -mean_i H(softmax(f(blend(x, b_i))))`` in bits.

  Example:
    >>> preds, s = strip_scores(model.apply, variables, images, overlays)
  """
  chex.assert_rank([images, overlays], 4)
  chex.assert_equal_shape([images[0], overlays[0]])
  preds = common.predict_labels(apply_fn, variables, images)

  def entropy_of(overlay):  # (H, W, C) -> (B,)
    logits = apply_fn(variables, superimpose(images, overlay, alpha, beta))
    return common.entropy_bits(jax.nn.softmax(logits, axis=-1))

  n = overlays.shape[0]
  if chunk is None or chunk >= n:
    ent = jax.vmap(entropy_of)(overlays)  # (N, B)
  else:
    ent = jax.lax.map(entropy_of, overlays, batch_size=int(chunk))
  chex.assert_shape(ent, (n, images.shape[0]))
  return preds, -jnp.mean(ent, axis=0).astype(jnp.float32)


def make(apply_fn: Callable, variables=None, *, key, benign_images=None, benign_labels=None,
         num_overlays: int = DEFAULT_NUM_OVERLAYS, alpha: float = 1.0, beta: float = 1.0,
         chunk: int | None = DEFAULT_CHUNK) -> common.Detector:
  """Builds a STRIP :class:`~scaleup_jax.baselines.common.Detector`.

  Args:
    apply_fn: ``(variables, images) -> logits``.
    variables: unused (STRIP is black-box).
    key: PRNG key that draws the ``num_overlays`` overlays from the benign set
      (without replacement when there are enough, else with).
    benign_images: ``(M, H, W, C)`` defender images in [0, 1] (required).
    benign_labels: unused.
    num_overlays: N (default 100, the paper's).
    alpha, beta: blend weights (default 1, 1: saturated sum, see module doc).
    chunk: overlays per step of ``lax.map``.

  Returns:
    A detector with ``needs='probabilities'`` and ``1 + N`` forwards per image.
  """
  del variables, benign_labels
  key = common.default_key(key)
  pool = common.check_benign('STRIP', benign_images)
  n = common.check_positive_int('num_overlays', num_overlays)
  if chunk is not None:
    chunk = common.check_positive_int('chunk', chunk)
  replace = n > len(pool)
  idx = jax.random.choice(key, len(pool), (n,), replace=replace)
  overlays = jnp.asarray(pool)[idx]
  core = jax.jit(lambda v, x, k, aux: strip_scores(apply_fn, v, x, aux, alpha, beta, chunk))
  return common.Detector(
      name='strip', core=core, aux=overlays, key=key, needs='probabilities',
      model_forwards=1 + n,
      config={'num_overlays': n, 'blend': f'clip({alpha} * x + {beta} * b, 0, 1)',
              'overlays_with_replacement': bool(replace), 'entropy': 'bits (log2)',
              'score': '-mean entropy'})
