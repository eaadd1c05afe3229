"""Frequency-domain detector: a small CNN on the images' DCT spectrum.

Zeng et al. observe that common triggers (patches, blended patterns, noise)
leave high-frequency artefacts, and train a binary classifier on the 2-D DCT
of images: clean images against *synthetic* poisoned ones made with random
triggers, never the attack it will meet. The score of an input is the
classifier's probability of "poisoned". The suspect model is not queried for
the score at all (it is only run for the prediction that is being served).

Here:

* Spectrum: orthonormal 2-D DCT-II of each colour channel of the whole image
  (:func:`~scaleup_jax.baselines.image_ops.dct2`, a matrix product), then
  standardised per coefficient with the mean and standard deviation of the
  clean training spectra (our addition: it makes a few hundred Adam steps
  enough; the paper feeds the DCT directly).
* Network (:class:`FrequencyCNN`): the paper's 6-convolution layout, three
  stages of two 3x3 convolutions with 32, 64, 128 filters, ELU, 2x2 max-pool,
  then a dense layer with two outputs. Deviation: no BatchNorm and no dropout
  (so inference is a pure function of the parameters).
* Synthetic triggers (:func:`synthetic_poison`), one kind per image, chosen
  uniformly:

  - patch: a square of side ``2..max(3, H // 6)`` at a random place, filled
    with random noise or one random colour;
  - blend: ``(1 - a) x + a p`` with ``a ~ U[0.05, 0.3]`` and ``p`` uniform
    noise at a random resolution (4x4, 8x8 or full, bilinearly upsampled);
  - noise: ``clip(x + N(0, s^2))`` with ``s ~ U[0.02, 0.1]``.

* Training (:func:`train_frequency_detector`): balanced batches of the
  defender's benign images and their synthetically poisoned copies, softmax
  cross-entropy, Adam (lr 1e-3), ``steps=300`` by default (a CPU-sized
  budget; the paper trains for many epochs on a full training set), seeded
  by ``key``.

Throughput: each scored image costs one forward pass of the suspect model (the
prediction) plus one of the frequency network (``model_forwards=1``,
``detector_forwards=1``); count both, as the SCALE-UP paper's cost accounting
counts every network evaluation.

Needs: the defender's benign images (training data); nothing from the model.

References:
  Zeng, Park, Mao, Jia. "Rethinking the Backdoor Attacks' Triggers: A
  Frequency Perspective". ICCV 2021. https://arxiv.org/abs/2104.03413
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from scaleup_jax.baselines import common, image_ops

DEFAULT_STEPS = 300
DEFAULT_BATCH = 64
DEFAULT_LR = 1e-3
DEFAULT_WIDTHS = (32, 64, 128)
TRIGGER_KINDS = ('patch', 'blend', 'noise')


class FrequencyCNN(nn.Module):
  """Binary classifier on DCT spectra ``(B, H, W, C)`` -> logits ``(B, 2)``."""

  widths: Sequence[int] = DEFAULT_WIDTHS

  @nn.compact
  def __call__(self, x):
    for w in self.widths:
      x = nn.elu(nn.Conv(w, (3, 3))(x))
      x = nn.elu(nn.Conv(w, (3, 3))(x))
      if min(x.shape[1:3]) >= 2:
        x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(2)(x)


@dataclasses.dataclass(frozen=True)
class FrequencyState:
  """A trained frequency detector: network parameters and spectrum statistics.

  A pytree (``params``, ``mean``, ``std`` are leaves), so it can be passed to
  jitted functions as an argument.
  """

  params: dict
  mean: jax.Array  # (H, W, C) mean of clean spectra
  std: jax.Array  # (H, W, C) their std (floored)


jax.tree_util.register_dataclass(FrequencyState, data_fields=['params', 'mean', 'std'],
                                 meta_fields=[])


def spectrum(images, mean=None, std=None):
  """DCT spectrum of ``(B, H, W, C)`` images, standardised if stats are given."""
  s = image_ops.dct2(images)
  if mean is not None:
    s = (s - mean) / std
  return s


# ----------------------------------------------------------- synthetic triggers


def synthetic_poison(key, images):
  """Stamps one random synthetic trigger on every image.

  All random quantities are drawn batch-wide (a few calls, a small program).

  Args:
    key: PRNG key.
    images: ``(B, H, W, C)`` in [0, 1].

  Returns:
    ``(poisoned, kinds)``: images ``(B, H, W, C)`` in [0, 1] and int32
    ``(B,)`` indices into :data:`TRIGGER_KINDS`.
  """
  chex.assert_rank(images, 4)
  b, h, w, c = images.shape
  k_kind, k_u, k_noise, k_gauss = jax.random.split(key, 4)
  kinds = jax.random.randint(k_kind, (b,), 0, len(TRIGGER_KINDS))
  u = jax.random.uniform(k_u, (8, b))  # scalar draws per image
  noise = jax.random.uniform(k_noise, images.shape)
  col = lambda v: v[:, None, None, None]

  # patch: side 2..max(3, H // 6), random place, noise or one colour
  max_side = max(3, h // 6)
  side = 2 + jnp.floor(u[0] * (max_side - 1)).astype(jnp.int32)
  y0 = jnp.floor(u[1] * (h - side + 1)).astype(jnp.int32)
  x0 = jnp.floor(u[2] * (w - side + 1)).astype(jnp.int32)
  yy, xx = jnp.arange(h)[None, :, None, None], jnp.arange(w)[None, None, :, None]
  inside = ((yy >= col(y0)) & (yy < col(y0 + side)) & (xx >= col(x0)) & (xx < col(x0 + side)))
  colour = noise[:, :1, :1, :]  # one random colour per image
  fill = jnp.where(col(u[3] < 0.5), noise, colour)
  patched = jnp.where(inside, fill, images)

  # blend: (1 - a) x + a p, p uniform noise at 4x4, 8x8 or full resolution
  def upsample(n):
    mh = jnp.asarray(image_ops.linear_matrix(h, min(n, h)))
    mw = jnp.asarray(image_ops.linear_matrix(w, min(n, w)))
    return jnp.einsum('hi,bijc,wj->bhwc', mh, noise[:, : min(n, h), : min(n, w)], mw)

  res = jnp.floor(u[4] * 3).astype(jnp.int32)
  pattern = jnp.where(col(res == 0), upsample(4), jnp.where(col(res == 1), upsample(8), noise))
  alpha = col(0.05 + 0.25 * u[5])
  blended = (1 - alpha) * images + alpha * pattern

  # noise: x + N(0, s^2), s ~ U[0.02, 0.1]
  noisy = images + col(0.02 + 0.08 * u[6]) * jax.random.normal(k_gauss, images.shape)

  out = jnp.where(col(kinds == 0), patched, jnp.where(col(kinds == 1), blended, noisy))
  return jnp.clip(out, 0.0, 1.0), kinds


# ------------------------------------------------------------------- training


def train_frequency_detector(key, clean_images, *, steps: int = DEFAULT_STEPS,
                             batch_size: int = DEFAULT_BATCH,
                             learning_rate: float = DEFAULT_LR,
                             widths: Sequence[int] = DEFAULT_WIDTHS):
  """Trains :class:`FrequencyCNN` on clean vs synthetically poisoned spectra.

  Args:
    key: PRNG key (initialisation, batches, triggers).
    clean_images: ``(M, H, W, C)`` benign images in [0, 1].
    steps: Adam steps (default 300).
    batch_size: clean images per step (each also poisoned, so ``2 *
      batch_size`` examples per step).
    learning_rate: Adam learning rate.
    widths: convolution widths of the three stages.

  Returns:
    ``(state, losses)``: a :class:`FrequencyState` and the ``(steps,)``
    training losses as numpy.

  Example:
    >>> state, losses = train_frequency_detector(jax.random.key(0), benign)
    >>> p_poison = frequency_scores(state, images, widths=DEFAULT_WIDTHS)
  """
  clean = jnp.asarray(clean_images, jnp.float32)
  chex.assert_rank(clean, 4)
  spectra = np.asarray(jax.jit(spectrum)(clean))
  mean = jnp.asarray(spectra.mean(0))
  std = jnp.asarray(np.maximum(spectra.std(0), 1e-3))
  net = FrequencyCNN(tuple(widths))
  k_init, k_loop = jax.random.split(key)
  params = jax.jit(net.init)(common.fast_key(k_init), spectra[:1])['params']
  tx = optax.adam(learning_rate)
  opt_state = tx.init(params)
  n = clean.shape[0]

  @jax.jit
  def step(params, opt_state, k, clean, mean, std):
    k_idx, k_trig = jax.random.split(k)
    batch = clean[jax.random.randint(k_idx, (batch_size,), 0, n)]
    poisoned, _ = synthetic_poison(k_trig, batch)
    x = spectrum(jnp.concatenate([batch, poisoned]), mean, std)
    y = jnp.concatenate([jnp.zeros(batch_size, jnp.int32), jnp.ones(batch_size, jnp.int32)])

    def loss_fn(p):
      logits = net.apply({'params': p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for k in jax.random.split(common.fast_key(k_loop), steps):
    params, opt_state, loss = step(params, opt_state, k, clean, mean, std)
    losses.append(loss)
  return FrequencyState(params, mean, std), np.asarray(jnp.stack(losses))


def frequency_scores(state: FrequencyState, images, widths: Sequence[int] = DEFAULT_WIDTHS):
  """Probability of "poisoned" ``(B,)`` from a trained :class:`FrequencyState`."""
  logits = FrequencyCNN(tuple(widths)).apply({'params': state.params},
                                             spectrum(images, state.mean, state.std))
  return jax.nn.softmax(logits, axis=-1)[:, 1].astype(jnp.float32)


def make(apply_fn: Callable, variables=None, *, key, benign_images=None, benign_labels=None,
         steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH,
         learning_rate: float = DEFAULT_LR, widths: Sequence[int] = DEFAULT_WIDTHS,
         state: FrequencyState | None = None) -> common.Detector:
  """Trains (unless ``state`` is given) and wraps a frequency detector.

  Args:
    apply_fn: ``(variables, images) -> logits`` (used only for ``preds``).
    variables, benign_labels: unused.
    key: PRNG key of the training run.
    benign_images: ``(M, H, W, C)`` defender images: the clean class of the
      training data (required unless ``state`` is given).
    steps, batch_size, learning_rate, widths: see
      :func:`train_frequency_detector`.
    state: an already trained detector (skips training).

  Returns:
    A detector with ``needs='none'``, one model and one detector forward per
    image; ``config['final_loss']`` reports the mean loss of the last 20 steps.
  """
  del variables, benign_labels
  key = common.default_key(key)
  widths = tuple(int(w) for w in widths)
  config = {'widths': list(widths), 'spectrum': 'orthonormal 2-D DCT per channel, standardised',
            'score': 'P(poisoned) of the frequency CNN', 'triggers': list(TRIGGER_KINDS)}
  if state is None:
    pool = common.check_benign('Frequency', benign_images, min_count=2)
    steps = common.check_positive_int('steps', steps)
    batch_size = common.check_positive_int('batch_size', batch_size)
    state, losses = train_frequency_detector(key, pool, steps=steps, batch_size=batch_size,
                                             learning_rate=learning_rate, widths=widths)
    config.update(steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                  num_clean=int(len(pool)), final_loss=float(losses[-20:].mean()))

  def core(v, x, k, aux):
    return common.predict_labels(apply_fn, v, x), frequency_scores(aux, x, widths)

  return common.Detector(name='frequency', core=jax.jit(core), aux=state, key=key, needs='none',
                         model_forwards=1, detector_forwards=1, config=config)
