"""ISSBA: invisible, sample-specific backdoor triggers from a steganography encoder.

ISSBA (Li et al. 2021) poisons a classifier with images that carry an
invisible, *sample-specific* trigger: a StegaStamp-style encoder (Tancik et
al. 2020) is trained to hide a bit string in an image as an additive residual
that a decoder can read back; the attacker then encodes one fixed
"target string" into every poisoned image. The secret is the same for all
images, but the residual depends on the image, so every trigger differs.

This module trains a reduced StegaStamp that fits a CPU:

* :class:`StegaEncoder` -- secret bits ``(B, L)`` go through a Dense layer to
  a small spatial map, are upsampled to the image size and concatenated with
  the image; a small U-Net (widths 16-32-64 by default, about 60k parameters)
  outputs a residual, and the encoded image is ``clip(image + residual, 0, 1)``.
* :class:`StegaDecoder` -- a small CNN from an image to ``L`` bit logits.
* :func:`train_stegastamp` -- joint training with
  ``BCE(bits) + w * mean(residual ** 2)``; the residual weight is ramped up
  linearly from 0, and every training image gets fresh random bits, so the
  decoder learns to read any secret.
* :class:`EncoderTrigger` -- the trained encoder and the one fixed secret of
  the attack, with the ``apply`` / ``arrays`` / ``from_arrays`` interface of
  the project's triggers.

What is left out of the full StegaStamp / BackdoorBox recipe: the LPIPS
perceptual loss, the WGAN critic and the spatial transformer in the decoder
(BackdoorBox trains with ``2.0 * l2 + 1.5 * lpips + 1.5 * secret + 0.5 * critic``
after ``enc_secret_only_epoch`` epochs of secret loss alone, Adam at lr 1e-4,
batch 32, secret size 20 by default), and the image distortions StegaStamp
uses to survive printing and photographing, which a digital backdoor does not
need.

References:
  Li et al., "Invisible Backdoor Attack with Sample-Specific Triggers",
  ICCV 2021. https://arxiv.org/abs/2012.03816
  Tancik et al., "StegaStamp: Invisible Hyperlinks in Physical Photographs",
  CVPR 2020. https://arxiv.org/abs/1904.05343
  BackdoorBox, ``core/attacks/ISSBA.py`` (StegaStampEncoder / Decoder, loss
  weights, fixed secret drawn as ``np.random.binomial(1, .5, secret_size)``).
  https://github.com/THUYimingLi/BackdoorBox
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from tqdm.auto import tqdm

from scaleup_jax.batching import map_batches
from scaleup_jax.validation import InputError

DEFAULT_SECRET_LEN = 16
DEFAULT_ENCODER_WIDTHS = (16, 32, 64)
DEFAULT_DECODER_WIDTHS = (16, 32, 64)
DEFAULT_SECRET_MAP = 8


def _check_secret(secret, secret_len: int) -> None:
  if secret.ndim < 1 or secret.shape[-1] != secret_len:
    raise InputError(
        f'secret has shape {tuple(secret.shape)} but the encoder expects '
        f'secret_len={secret_len} bits in the last axis')


def _check_image_shape(shape, levels: int, where: str) -> None:
  if len(shape) != 4:
    raise InputError(f'{where}: expected images of shape (B, H, W, C), got {tuple(shape)}')
  factor = 2 ** (levels - 1)
  if shape[1] % factor or shape[2] % factor:
    raise InputError(
        f'{where}: image size {shape[1]}x{shape[2]} must be divisible by {factor} '
        f'for a U-Net with {levels} levels')


class StegaEncoder(nn.Module):
  """Reduced StegaStamp encoder: (image, secret bits) -> residual.

  Like BackdoorBox's ``StegaStampEncoder`` (after the official StegaStamp), the
  inputs are shifted by -0.5, the secret goes through a Dense + ReLU to a
  spatial map that is concatenated with the image, and a U-Net with skip
  connections (nearest upsampling followed by a 2x2 convolution on the way up)
  predicts the residual. Here the secret map is ``secret_map x secret_map x 3``
  and is upsampled to the image size instead of being a full-size Dense
  output, and the U-Net has ``len(widths)`` levels instead of five.

  Attributes:
    secret_len: number of secret bits ``L``.
    widths: channels per U-Net level, finest first; the image side must be
      divisible by ``2 ** (len(widths) - 1)``.
    secret_map: side of the spatial map the secret is projected to.
  """

  secret_len: int = DEFAULT_SECRET_LEN
  widths: Sequence[int] = DEFAULT_ENCODER_WIDTHS
  secret_map: int = DEFAULT_SECRET_MAP

  @nn.compact
  def __call__(self, images, secret):
    """Returns the residual ``(B, H, W, C)`` for ``images`` and ``secret``.

    Args:
      images: ``(B, H, W, C)`` float in [0, 1].
      secret: ``(B, L)`` bits in {0, 1} (float).

    Returns:
      The residual, ``(B, H, W, C)`` float32 (unbounded; see :meth:`encode`).
    """
    _check_image_shape(images.shape, len(self.widths), 'StegaEncoder')
    _check_secret(secret, self.secret_len)
    b, h, w, c = images.shape
    s = nn.Dense(self.secret_map * self.secret_map * 3, name='secret_dense')(
        jnp.asarray(secret, jnp.float32) - 0.5)
    s = nn.relu(s).reshape(secret.shape[0], self.secret_map, self.secret_map, 3)
    s = jax.image.resize(s, (s.shape[0], h, w, 3), 'nearest')
    s = jnp.broadcast_to(s, (b, h, w, 3))
    inputs = jnp.concatenate([jnp.asarray(images, jnp.float32) - 0.5, s], axis=-1)

    skips = []
    x = inputs
    for i, width in enumerate(self.widths):
      stride = 1 if i == 0 else 2
      x = nn.relu(nn.Conv(width, (3, 3), (stride, stride), name=f'down{i}')(x))
      skips.append(x)
    for i in reversed(range(len(self.widths) - 1)):
      x = jax.image.resize(x, skips[i].shape[:3] + (x.shape[-1],), 'nearest')
      x = nn.relu(nn.Conv(self.widths[i], (2, 2), name=f'up{i}')(x))
      merge = [skips[i], x] + ([inputs] if i == 0 else [])
      x = nn.relu(nn.Conv(self.widths[i], (3, 3), name=f'merge{i}')(jnp.concatenate(merge, -1)))
    return nn.Conv(c, (1, 1), name='residual')(x)

  def encode(self, images, secret):
    """Returns the encoded images ``clip(images + residual, 0, 1)``, ``(B, H, W, C)``."""
    return jnp.clip(jnp.asarray(images, jnp.float32) + self(images, secret), 0.0, 1.0)


class StegaDecoder(nn.Module):
  """Small CNN from an image to secret-bit logits.

  BackdoorBox's ``StegaStampDecoder`` adds a spatial transformer and seven
  convolutions; for a digital attack on 32x32 images a few strided
  convolutions and two Dense layers suffice.

  Attributes:
    secret_len: number of secret bits ``L``.
    widths: channels of the stride-2 3x3 convolutions.
    hidden: width of the hidden Dense layer.
  """

  secret_len: int = DEFAULT_SECRET_LEN
  widths: Sequence[int] = DEFAULT_DECODER_WIDTHS
  hidden: int = 128

  @nn.compact
  def __call__(self, images):
    """Maps images ``(B, H, W, C)`` in [0, 1] to bit logits ``(B, L)``."""
    if images.ndim != 4:
      raise InputError(f'StegaDecoder: expected images (B, H, W, C), got {tuple(images.shape)}')
    x = jnp.asarray(images, jnp.float32) - 0.5
    for i, width in enumerate(self.widths):
      x = nn.relu(nn.Conv(width, (3, 3), (2, 2), name=f'conv{i}')(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, name='hidden')(x))
    return nn.Dense(self.secret_len, name='logits')(x)


def bit_accuracy(logits, bits):
  """Fraction of bits ``(B, L)`` whose logit has the right sign."""
  return jnp.mean((logits > 0) == (bits > 0.5))


def psnr(images, encoded):
  """Per-image PSNR in dB for pixel range [0, 1]: ``(B,)`` (inf where identical)."""
  mse = jnp.mean((encoded - images) ** 2, axis=tuple(range(1, images.ndim)))
  return 10.0 * jnp.log10(1.0 / mse)


def _residual_weight(step, weight: float, warmup_steps: int, ramp_steps: int):
  """0 for ``warmup_steps`` steps, then linear up to ``weight`` over ``ramp_steps``."""
  t = step.astype(jnp.float32) - warmup_steps
  if ramp_steps <= 0:
    return jnp.where(t >= 0, weight, 0.0).astype(jnp.float32)
  return weight * jnp.clip((t + 1) / ramp_steps, 0.0, 1.0)


def _stega_loss(params, x, bits, w, encoder, decoder):
  residual = encoder.apply({'params': params['encoder']}, x, bits)
  encoded = jnp.clip(x + residual, 0.0, 1.0)
  logits = decoder.apply({'params': params['decoder']}, encoded)
  bce = optax.sigmoid_binary_cross_entropy(logits, bits).mean()
  l2 = jnp.mean(residual ** 2)
  return bce + w * l2, {'bce': bce, 'l2': l2, 'bit_accuracy': bit_accuracy(logits, bits)}


@functools.partial(jax.jit, static_argnames=(
    'encoder', 'decoder', 'batch_size', 'lr', 'residual_weight', 'warmup_steps', 'ramp_steps'))
def _train_step(params, opt_state, step, key, train_x, *, encoder, decoder, batch_size, lr,
                residual_weight, warmup_steps, ramp_steps):
  """One Adam step on a random batch with fresh random bits (module level, so it is cached)."""
  k_idx, k_bits = jax.random.split(jax.random.fold_in(key, step))
  idx = jax.random.randint(k_idx, (batch_size,), 0, train_x.shape[0])
  x = train_x[idx]
  bits = jax.random.bernoulli(k_bits, 0.5, (batch_size, encoder.secret_len)).astype(jnp.float32)
  w = _residual_weight(step, residual_weight, warmup_steps, ramp_steps)
  (loss, aux), grads = jax.value_and_grad(_stega_loss, has_aux=True)(
      params, x, bits, w, encoder, decoder)
  tx = optax.adam(lr)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, {'loss': loss, **aux}


def train_stegastamp(
    key: jax.Array,
    images,
    secret_len: int = DEFAULT_SECRET_LEN,
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 1e-3,
    residual_weight: float = 30.0,
    warmup_steps: int | None = None,
    ramp_steps: int | None = None,
    encoder_widths: Sequence[int] = DEFAULT_ENCODER_WIDTHS,
    decoder_widths: Sequence[int] = DEFAULT_DECODER_WIDTHS,
    secret_map: int = DEFAULT_SECRET_MAP,
    decoder_hidden: int = 128,
    num_eval: int = 512,
    log_every: int = 50,
    progress: bool = True,
) -> tuple[dict, dict, dict]:
  """Trains a :class:`StegaEncoder` / :class:`StegaDecoder` pair on ``images``.

  Each step draws ``batch_size`` training images (uniformly, with replacement)
  and fresh random bits per image, encodes, clips to [0, 1], decodes, and
  takes an Adam step on

      loss = BCE(decoder(encoded), bits) + w_t * mean(residual ** 2),

  where ``w_t`` is 0 for the first ``warmup_steps`` (secret loss only, as
  BackdoorBox does for its first ``enc_secret_only_epoch`` epochs and
  StegaStamp for its first steps) and then ramps linearly to
  ``residual_weight`` over ``ramp_steps`` (StegaStamp ramps its image losses
  in the same way). Without the warm-up the residual penalty wins while the
  bits are still at chance and the residual collapses to ~0. The
  last ``num_eval`` images of a seeded permutation (at most a tenth of
  them) are held out for the final metrics.

  Args:
    key: PRNG key; the same key gives the same encoder and decoder.
    images: ``(N, H, W, C)`` float in [0, 1] (numpy or jax).
    secret_len: number of secret bits ``L``.
    steps: number of training steps.
    batch_size: images per step.
    lr: Adam learning rate.
    residual_weight: final weight ``w`` of the mean squared residual.
    warmup_steps: steps trained on the secret loss alone; None means
      ``steps // 5``.
    ramp_steps: steps over which the residual weight then ramps up from 0;
      None means ``steps // 5``.
    encoder_widths, decoder_widths, secret_map, decoder_hidden: architecture,
      see :class:`StegaEncoder` and :class:`StegaDecoder`.
    num_eval: maximum number of held-out images.
    log_every: steps between progress-bar updates (each syncs the host).
    progress: show a tqdm bar.

  Returns:
    ``(encoder_variables, decoder_variables, metrics)``; the variables are
    ``{'params': ...}`` for ``StegaEncoder(secret_len, encoder_widths,
    secret_map).apply`` and the decoder. ``metrics`` holds, on the held-out
    images with random bits: ``bit_accuracy``, ``psnr`` (mean per-image PSNR,
    dB), ``residual_mean_abs`` and ``residual_max_abs`` (of
    ``encoded - image``, i.e. after clipping), plus ``initial_loss`` (first
    batch), ``final_loss``, ``train_bit_accuracy`` (last logged batch),
    ``steps``, ``seconds`` (wall, including compilation),
    ``seconds_per_step`` (wall, after the first, compiling step),
    ``num_train``, ``num_eval``, ``encoder_num_params``.
  """
  images = np.asarray(images, np.float32)
  _check_image_shape(images.shape, len(encoder_widths), 'train_stegastamp')
  n = images.shape[0]
  if n < 2:
    raise InputError(f'train_stegastamp needs at least 2 images (train + held-out), got {n}')
  if steps < 1 or batch_size < 1:
    raise InputError(f'steps ({steps}) and batch_size ({batch_size}) must be positive')
  if secret_len < 1:
    raise InputError(f'secret_len must be positive, got {secret_len}')
  if residual_weight < 0:
    raise InputError(f'residual_weight must be >= 0, got {residual_weight}')
  warmup = steps // 5 if warmup_steps is None else int(warmup_steps)
  ramp = steps // 5 if ramp_steps is None else int(ramp_steps)

  k_perm, k_enc, k_dec, k_train, k_eval = jax.random.split(key, 5)
  perm = np.asarray(jax.random.permutation(k_perm, n))
  n_eval = max(1, min(num_eval, n // 10))
  train_x = jnp.asarray(images[perm[:-n_eval]])
  eval_x = images[perm[-n_eval:]]

  encoder = StegaEncoder(secret_len, tuple(encoder_widths), secret_map)
  decoder = StegaDecoder(secret_len, tuple(decoder_widths), decoder_hidden)
  dummy = jnp.zeros((1, *images.shape[1:]), jnp.float32)
  params = {
      'encoder': encoder.init(k_enc, dummy, jnp.zeros((1, secret_len)))['params'],
      'decoder': decoder.init(k_dec, dummy)['params'],
  }
  opt_state = optax.adam(lr).init(params)
  static = dict(encoder=encoder, decoder=decoder, batch_size=int(batch_size), lr=float(lr),
                residual_weight=float(residual_weight), warmup_steps=warmup, ramp_steps=ramp)

  t0 = time.time()
  logged = {}
  bar = tqdm(range(steps), desc='stegastamp', unit='step', disable=not progress,
             dynamic_ncols=True)
  for step in bar:
    params, opt_state, m = _train_step(params, opt_state, jnp.int32(step), k_train, train_x,
                                       **static)
    if step % log_every == 0 or step == steps - 1:
      logged = {k: float(v) for k, v in jax.device_get(m).items()}
      if step == 0:
        initial_loss = logged['loss']
        t1 = time.time()
      bar.set_postfix(loss=f"{logged['loss']:.3f}", bits=f"{logged['bit_accuracy']:.3f}",
                      rms=f"{np.sqrt(logged['l2']):.4f}")
  jax.block_until_ready(params)
  time_end = time.time()
  seconds = time_end - t0

  eval_bits = jax.random.bernoulli(k_eval, 0.5, (n_eval, secret_len)).astype(jnp.float32)
  metrics = stegastamp_metrics(
      {'params': params['encoder']}, {'params': params['decoder']}, eval_x, eval_bits,
      secret_len=secret_len, encoder_widths=encoder_widths, decoder_widths=decoder_widths,
      secret_map=secret_map, decoder_hidden=decoder_hidden)
  metrics.update(
      initial_loss=initial_loss, final_loss=logged['loss'],
      train_bit_accuracy=logged['bit_accuracy'], steps=int(steps),
      seconds=round(seconds, 2),
      seconds_per_step=round((time_end - t1) / (steps - 1) if steps > 1 else seconds, 4),
      num_train=int(train_x.shape[0]), num_eval=int(n_eval),
      encoder_num_params=int(sum(np.size(p) for p in jax.tree.leaves(params['encoder']))))
  return {'params': params['encoder']}, {'params': params['decoder']}, metrics


def stegastamp_metrics(
    encoder_variables,
    decoder_variables,
    images,
    bits,
    secret_len: int = DEFAULT_SECRET_LEN,
    encoder_widths: Sequence[int] = DEFAULT_ENCODER_WIDTHS,
    decoder_widths: Sequence[int] = DEFAULT_DECODER_WIDTHS,
    secret_map: int = DEFAULT_SECRET_MAP,
    decoder_hidden: int = 128,
    batch_size: int = 256,
) -> dict:
  """Bit accuracy and imperceptibility of an encoder/decoder pair.

  Args:
    encoder_variables, decoder_variables: as returned by :func:`train_stegastamp`.
    images: ``(N, H, W, C)`` float in [0, 1].
    bits: ``(N, L)`` or ``(L,)`` (one secret for all images) bits in {0, 1}.
    secret_len, encoder_widths, decoder_widths, secret_map, decoder_hidden:
      the architecture the variables belong to.
    batch_size: images per forward pass.

  Returns:
    ``{'bit_accuracy', 'psnr', 'residual_mean_abs', 'residual_max_abs'}`` as
    floats; ``psnr`` is the mean per-image PSNR in dB, the residuals are
    ``encoded - image`` after clipping.
  """
  images = np.asarray(images, np.float32)
  bits = np.broadcast_to(np.asarray(bits, np.float32), (len(images), secret_len))
  encoder = StegaEncoder(secret_len, tuple(encoder_widths), secret_map)
  decoder = StegaDecoder(secret_len, tuple(decoder_widths), decoder_hidden)

  @jax.jit
  def fn(batch):
    x, b = batch[..., :-secret_len].reshape((-1, *images.shape[1:])), batch[..., -secret_len:]
    enc = encoder.apply(encoder_variables, x, b, method=StegaEncoder.encode)
    logits = decoder.apply(decoder_variables, enc)
    diff = jnp.abs(enc - x).reshape(x.shape[0], -1)
    return (jnp.mean((logits > 0) == (b > 0.5), -1), psnr(x, enc), diff.mean(-1), diff.max(-1))

  packed = np.concatenate([images.reshape(len(images), -1), bits], axis=-1)
  acc, p, mean_abs, max_abs = map_batches(fn, packed, min(batch_size, len(images)))
  return {'bit_accuracy': float(acc.mean()), 'psnr': float(np.mean(p)),
          'residual_mean_abs': float(mean_abs.mean()), 'residual_max_abs': float(max_abs.max())}


@functools.partial(jax.jit, static_argnums=0)
def _encode_fixed_secret(module: StegaEncoder, variables, images, secret, strength=1.0):
  """``clip(images + strength * residual, 0, 1)`` for ``images`` ``(B, H, W, C)`` and one
  secret ``(L,)`` for all (``module.encode`` at ``strength`` 1)."""
  secret = jnp.broadcast_to(secret, (images.shape[0], secret.shape[0]))
  residual = module.apply(variables, images, secret)
  return jnp.clip(images + strength * residual, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class EncoderTrigger:
  """An ISSBA trigger: a trained StegaStamp encoder and one fixed secret.

  ``apply(x) = clip(x + strength * encoder(x, secret), 0, 1)``: the secret is
  the same for every image (ISSBA's target string), the residual is not.
  ``strength`` 1 is the encoder as trained; larger values amplify the
  residual (lower PSNR) without retraining.

  Attributes:
    params: flattened encoder parameters, ``'/'``-joined keys (e.g.
      ``'down0/kernel'``) to numpy arrays.
    secret: ``(L,)`` float32 bits in {0, 1}.
    image_shape: ``(H, W, C)`` the encoder was built for.
    widths: encoder U-Net widths.
    secret_map: side of the encoder's secret map.
    strength: factor on the residual (> 0; 1 = as trained).
    chunk: batch size for numpy inputs (fixed, so the encoder compiles once).
  """

  kind: ClassVar[str] = 'encoder'

  params: dict[str, np.ndarray]
  secret: np.ndarray
  image_shape: tuple[int, int, int] = (32, 32, 3)
  widths: tuple[int, ...] = DEFAULT_ENCODER_WIDTHS
  secret_map: int = DEFAULT_SECRET_MAP
  strength: float = 1.0
  chunk: int = 256

  def __post_init__(self):
    params = {k: np.asarray(v, np.float32) for k, v in self.params.items()}
    secret = np.asarray(self.secret, np.float32)
    object.__setattr__(self, 'params', params)
    object.__setattr__(self, 'secret', secret)
    object.__setattr__(self, 'image_shape', tuple(int(s) for s in self.image_shape))
    object.__setattr__(self, 'widths', tuple(int(w) for w in self.widths))
    object.__setattr__(self, 'secret_map', int(self.secret_map))
    object.__setattr__(self, 'strength', float(self.strength))
    if not (np.isfinite(self.strength) and self.strength > 0):
      raise InputError(f'strength must be a finite number > 0, got {self.strength}')
    if secret.ndim != 1 or not np.all((secret == 0) | (secret == 1)):
      raise InputError(f'secret must be a 1-D array of 0/1 bits, got shape {secret.shape} '
                       f'and values {np.unique(secret)[:8]}')
    dense = params.get('secret_dense/kernel')
    if dense is None:
      raise InputError(f'params lack secret_dense/kernel; keys are {sorted(params)[:8]}')
    if dense.shape[0] != secret.shape[0]:
      raise InputError(f'secret has {secret.shape[0]} bits but the encoder expects '
                       f'{dense.shape[0]} (secret_dense/kernel {dense.shape})')
    if len(self.image_shape) != 3:
      raise InputError(f'image_shape must be (H, W, C), got {self.image_shape}')

  @property
  def secret_len(self) -> int:
    return int(self.secret.shape[0])

  @property
  def module(self) -> StegaEncoder:
    return StegaEncoder(self.secret_len, self.widths, self.secret_map)

  def variables(self) -> dict:
    """The encoder variables ``{'params': nested dict of jax arrays}``."""
    return {'params': traverse_util.unflatten_dict(
        {k: jnp.asarray(v) for k, v in self.params.items()}, sep='/')}

  def _encode(self, batch):
    return _encode_fixed_secret(self.module, self.variables(), batch, jnp.asarray(self.secret),
                                self.strength)

  def apply(self, images):
    """Encodes the fixed secret into ``images``.

    Args:
      images: ``(..., H, W, C)`` float in [0, 1], numpy or jax (jittable for
        jax input).

    Returns:
      Encoded images ``clip(images + residual, 0, 1)``; same shape, dtype and
      array type (numpy in, numpy out) as ``images``.
    """
    if tuple(images.shape[-3:]) != self.image_shape:
      raise InputError(f'images have shape {tuple(images.shape)}; the encoder expects '
                       f'(..., {", ".join(map(str, self.image_shape))})')
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise InputError(f'images must be floating point in [0, 1], got dtype {images.dtype}')
    lead = images.shape[:-3]
    if isinstance(images, jax.Array):
      flat = images.reshape((-1, *self.image_shape)).astype(jnp.float32)
      if flat.shape[0] == 0:
        return images
      return self._encode(flat).reshape(images.shape).astype(images.dtype)
    flat = np.asarray(images, np.float32).reshape((-1, *self.image_shape))
    if flat.shape[0] == 0:
      return np.array(images, copy=True)
    out = map_batches(self._encode, flat, min(self.chunk, flat.shape[0]))
    return out.reshape((*lead, *self.image_shape)).astype(images.dtype)

  def arrays(self) -> dict[str, np.ndarray]:
    """Every array needed to rebuild the trigger, as a flat dict (for ``np.savez``)."""
    out = {f'params/{k}': v for k, v in self.params.items()}
    out.update(
        secret=self.secret,
        image_shape=np.asarray(self.image_shape, np.int32),
        widths=np.asarray(self.widths, np.int32),
        secret_map=np.asarray(self.secret_map, np.int32),
        strength=np.asarray(self.strength, np.float32))
    return out

  @classmethod
  def from_arrays(cls, arrays) -> EncoderTrigger:
    """Rebuilds a trigger from :meth:`arrays` (or an ``np.load``-ed npz of it)."""
    missing = [k for k in ('secret', 'image_shape', 'widths', 'secret_map') if k not in arrays]
    if missing:
      raise InputError(f'arrays lack {missing} needed to rebuild an EncoderTrigger')
    params = {k[len('params/'):]: np.asarray(arrays[k]) for k in arrays
              if k.startswith('params/')}
    return cls(params=params, secret=np.asarray(arrays['secret']),
               image_shape=tuple(np.asarray(arrays['image_shape']).tolist()),
               widths=tuple(np.asarray(arrays['widths']).tolist()),
               secret_map=int(np.asarray(arrays['secret_map'])),
               strength=float(np.asarray(arrays['strength'])) if 'strength' in arrays else 1.0)


def issba_trigger_from_training(
    key: jax.Array,
    images,
    secret_len: int = DEFAULT_SECRET_LEN,
    steps: int = 3000,
    **kwargs: Any,
) -> tuple[EncoderTrigger, dict]:
  """Trains a StegaStamp encoder on ``images`` and returns the ISSBA trigger.

  The fixed secret is drawn as ``secret_len`` fair coin flips from the key,
  as BackdoorBox draws ``np.random.binomial(1, .5, secret_size)``.

  Args:
    key: PRNG key; split into a training key and a secret key.
    images: ``(N, H, W, C)`` float in [0, 1] to train on.
    secret_len: number of secret bits ``L``.
    steps: training steps.
    **kwargs: passed to :func:`train_stegastamp` (``batch_size``, ``lr``,
      ``residual_weight``, ``encoder_widths``, ``progress``, ...).

  Returns:
    ``(trigger, metrics)``: metrics of :func:`train_stegastamp` plus
    ``secret_bit_accuracy`` / ``secret_psnr`` etc., measured on the held-out
    images with the fixed secret.
  """
  k_train, k_secret = jax.random.split(key)
  enc_vars, dec_vars, metrics = train_stegastamp(
      k_train, images, secret_len=secret_len, steps=steps, **kwargs)
  secret = np.asarray(jax.random.bernoulli(k_secret, 0.5, (secret_len,)), np.float32)
  widths = tuple(kwargs.get('encoder_widths', DEFAULT_ENCODER_WIDTHS))
  secret_map = int(kwargs.get('secret_map', DEFAULT_SECRET_MAP))
  trigger = EncoderTrigger(
      params={k: np.asarray(v) for k, v in
              traverse_util.flatten_dict(jax.device_get(enc_vars['params']), sep='/').items()},
      secret=secret, image_shape=tuple(np.shape(images)[1:]), widths=widths,
      secret_map=secret_map)
  # Held-out images: the same permutation train_stegastamp used.
  n = np.shape(images)[0]
  perm = np.asarray(jax.random.permutation(jax.random.split(k_train, 5)[0], n))
  eval_x = np.asarray(images, np.float32)[perm[-metrics['num_eval']:]]
  fixed = stegastamp_metrics(
      enc_vars, dec_vars, eval_x, secret, secret_len=secret_len, encoder_widths=widths,
      decoder_widths=kwargs.get('decoder_widths', DEFAULT_DECODER_WIDTHS),
      secret_map=secret_map, decoder_hidden=kwargs.get('decoder_hidden', 128))
  metrics.update({f'secret_{k}': v for k, v in fixed.items()})
  return trigger, metrics
