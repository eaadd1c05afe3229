"""Adversarial-perturbation attacks: PGD, Label-Consistent and TUAP.

Two clean-label backdoor attacks need adversarial examples of a *clean*
model:

* **Label-Consistent** (Turner et al.) makes target-class training images
  hard to classify with an untargeted L-inf PGD perturbation
  (:func:`pgd_untargeted`, :func:`pgd_dataset`) and then stamps a small
  checkerboard in the four corners (:func:`label_consistent_trigger`), so the
  network learns to rely on the trigger.
* **TUAP** (Zhao et al.) uses one targeted universal adversarial perturbation
  (:func:`targeted_uap`) as an additive trigger (:class:`AdditiveTrigger`),
  added to target-class training images and to every test image.

Models are black boxes ``apply_fn(variables, images) -> logits (B, K)`` on
pixels in [0, 1]; any normalisation lives inside the model. Every function
works in pixel space and keeps images in [0, 1].

Compilation: the jitted kernels take ``apply_fn`` and the number of steps as
static arguments and ``eps`` / step sizes as traced ones, so one compile
serves each (apply_fn, image shape, steps); changing ``eps`` does not
recompile. Pass the same ``apply_fn`` object each call (e.g.
``run.apply_fn`` of one :func:`scaleup_jax.checkpoint.load_run` result, not a
fresh lambda) to reuse the compiled code.

References:
  Madry, Makelov, Schmidt, Tsipras, Vladu. "Towards Deep Learning Models
  Resistant to Adversarial Attacks", ICLR 2018 (PGD).
  https://arxiv.org/abs/1706.06083
  Turner, Tsipras, Madry. "Label-Consistent Backdoor Attacks", 2019.
  https://arxiv.org/abs/1912.02771 ; code:
  https://github.com/MadryLab/label-consistent-backdoor-code
  Zhao, Ma, Zheng, Bailey, Chen, Jiang. "Clean-Label Backdoor Attacks on
  Video Recognition Models", CVPR 2020. https://arxiv.org/abs/2003.03030
  Moosavi-Dezfooli, Fawzi, Fawzi, Frossard. "Universal adversarial
  perturbations", CVPR 2017. https://arxiv.org/abs/1610.08401
  Li et al. "BackdoorBox: A Python Toolbox for Backdoor Learning", 2023
  (``core/attacks/LabelConsistent.py``, ``core/attacks/TUAP.py``,
  ``tests/test_LabelConsistent.py``, ``tests/test_TUAP.py``).
  https://github.com/THUYimingLi/BackdoorBox
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from scaleup_jax import poison, scaleup
from scaleup_jax.batching import map_batches, pad_to
from scaleup_jax.validation import InputError, check_image_batch, check_images

ApplyFn = Callable[[Any, jax.Array], jax.Array]


# ------------------------------------------------------------------ checks


def _check_labels(labels, n: int) -> None:
  if np.shape(labels) != (n,):
    raise InputError(f'labels must have shape ({n},) to match the images, got {np.shape(labels)}')


def _check_budget(eps: float, step: float | None = None, steps: int | None = None) -> None:
  if not (np.isfinite(eps) and 0.0 <= eps <= 1.0):
    raise InputError(f'eps must be in [0, 1] (pixel units), got {eps}')
  if step is not None and not (np.isfinite(step) and step >= 0.0):
    raise InputError(f'step size must be finite and >= 0, got {step}')
  if steps is not None and (int(steps) != steps or steps < 0):
    raise InputError(f'steps must be a non-negative integer, got {steps}')


def _log_softmax_at(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """``log p(labels | x)`` per example, from logits ``(B, K)``."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


# ------------------------------------------------------------------ PGD


@functools.partial(jax.jit, static_argnames=('apply_fn', 'steps', 'random_start'))
def _pgd(key, variables, images, labels, indices, eps, step, *, apply_fn, steps, random_start):
  """Jitted L-inf PGD; ``indices`` (B,) seed the per-example random starts."""
  x0 = images.astype(jnp.float32)
  lo = jnp.clip(x0 - eps, 0.0, 1.0)
  hi = jnp.clip(x0 + eps, 0.0, 1.0)
  if random_start:
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
    noise = jax.vmap(lambda k: jax.random.uniform(k, x0.shape[1:], jnp.float32, -1.0, 1.0))(keys)
    x = jnp.clip(x0 + eps * noise, lo, hi)
  else:
    x = x0

  def loss(x):
    # Summed (not mean) cross-entropy: each example's gradient is its own.
    return -jnp.sum(_log_softmax_at(apply_fn(variables, x), labels))

  def body(_, x):
    g = jax.grad(loss)(x)
    return jnp.clip(x + step * jnp.sign(g), lo, hi)

  return jax.lax.fori_loop(0, steps, body, x)


def pgd_untargeted(
    key: jax.Array,
    apply_fn: ApplyFn,
    variables: Any,
    images,
    labels,
    eps: float = 8 / 255,
    step: float = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
) -> jax.Array:
  """Untargeted L-inf PGD: maximises the cross-entropy of the true label.

  Each step is ``x <- clip(x + step * sign(grad_x CE(f(x), y)), x0 - eps, x0 + eps)``
  intersected with [0, 1] (Madry et al. 2018). With ``random_start`` the
  iterate starts from ``x0 + U(-eps, eps)`` (projected); the noise of example
  ``i`` is drawn from ``fold_in(key, i)``. The loop is a ``lax.fori_loop``
  with static ``steps``, so one compile serves each (image shape, steps).

  Defaults (eps 8/255, step 2/255, 10 steps, random start) are the usual
  CIFAR-10 PGD-10 of Madry et al. BackdoorBox's Label-Consistent example
  (``tests/test_LabelConsistent.py``) uses eps 8/255, step 1.5/255, 100 steps
  and no random start; Turner et al. report L-inf budgets 8/255 and 16/255.

  Args:
    key: PRNG key for the random start (unused when ``random_start`` is False).
    apply_fn: ``apply_fn(variables, images) -> logits (B, K)``, pixels in [0, 1].
    variables: model variables passed to ``apply_fn``.
    images: ``(B, H, W, C)`` float in [0, 1] (numpy or jax).
    labels: ``(B,)`` int true labels.
    eps: L-inf radius in pixel units, in [0, 1].
    step: step size per iteration in pixel units.
    steps: number of iterations (static: each value compiles once).
    random_start: start from a uniform point of the eps ball.

  Returns:
    Perturbed images ``(B, H, W, C)`` float32 jax array, within ``eps`` of
    ``images`` in L-inf and inside [0, 1].

  Raises:
    InputError: on bad shapes, values outside [0, 1] or a negative budget.

  References:
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial
    Attacks", ICLR 2018. https://arxiv.org/abs/1706.06083
  """
  if isinstance(images, jax.Array):
    check_image_batch(images)  # rank and dtype; the values stay on the device
  else:
    images = check_images(images)
  _check_labels(labels, np.shape(images)[0])
  _check_budget(eps, step, steps)
  indices = jnp.arange(np.shape(images)[0], dtype=jnp.uint32)
  return _pgd(key, variables, jnp.asarray(images), jnp.asarray(labels), indices,
              jnp.float32(eps), jnp.float32(step), apply_fn=apply_fn, steps=int(steps),
              random_start=bool(random_start))


def pgd_dataset(
    key: jax.Array,
    apply_fn: ApplyFn,
    variables: Any,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 256,
    progress: bool = True,
    **pgd_kwargs,
) -> np.ndarray:
  """Runs :func:`pgd_untargeted` over a host array in fixed-size batches.

  The last batch is padded to ``batch_size`` (one compile serves every batch)
  and its padded rows dropped. The random start of example ``i`` comes from
  ``fold_in(key, i)`` with ``i`` its index in ``images``, so the result does
  not depend on ``batch_size`` (up to float reassociation in the model).

  Args:
    key: PRNG key.
    apply_fn: ``apply_fn(variables, images) -> logits (B, K)``.
    variables: model variables.
    images: ``(N, H, W, C)`` float32 host array in [0, 1].
    labels: ``(N,)`` int true labels.
    batch_size: examples per compiled call.
    progress: show a tqdm progress bar.
    **pgd_kwargs: ``eps``, ``step``, ``steps``, ``random_start`` of
      :func:`pgd_untargeted`.

  Returns:
    ``(N, H, W, C)`` float32 numpy array of perturbed images.
  """
  unknown = set(pgd_kwargs) - {'eps', 'step', 'steps', 'random_start'}
  if unknown:
    raise InputError(f'unknown PGD options {sorted(unknown)}; expected eps, step, steps, random_start')
  if int(batch_size) != batch_size or batch_size < 1:
    raise InputError(f'batch_size must be a positive integer, got {batch_size}')
  images = check_images(images)
  labels = np.asarray(labels)
  _check_labels(labels, len(images))
  opts = dict(eps=8 / 255, step=2 / 255, steps=10, random_start=True)
  opts.update(pgd_kwargs)
  _check_budget(opts['eps'], opts['step'], opts['steps'])
  n = len(images)
  batch_size = min(int(batch_size), n)
  eps, step = jnp.float32(opts['eps']), jnp.float32(opts['step'])
  outs = []
  for start in tqdm(range(0, n, batch_size), desc='PGD', disable=not progress, unit='batch',
                    leave=False):
    x = images[start:start + batch_size]
    valid = len(x)
    y = labels[start:start + batch_size]
    idx = np.arange(start, start + batch_size, dtype=np.uint32)
    out = _pgd(key, variables, pad_to(x, batch_size), pad_to(y, batch_size), idx, eps, step,
               apply_fn=apply_fn, steps=int(opts['steps']),
               random_start=bool(opts['random_start']))
    outs.append((out, valid))
  return np.concatenate([np.asarray(o)[:v] for o, v in outs], axis=0).astype(np.float32)


# ------------------------------------------------------------------ Label-Consistent

# The 3x3 corner patch of Turner et al.'s "all-corners" trigger (MadryLab
# label-consistent-backdoor-code, poison_attack.py; the same 16 white pixels as
# BackdoorBox tests/test_LabelConsistent.py). 1 = +amplitude (white at full
# amplitude), 0 = -amplitude (black). Rows top to bottom, columns from the
# image's left edge; the right-hand corners use it mirrored left-right, the
# top and bottom corners use the same rows (no vertical flip), so the trigger
# survives horizontal-flip augmentation.
_TURNER_PATCH = np.array([[1, 0, 0],
                          [0, 1, 0],
                          [1, 0, 1]], np.float32)


def _corner_signs(image_shape, size: int, corners: int, pattern: str, margin: int):
  """Returns ``(mask, signs)`` of shape (H, W, C): 1 on the patches, +-1 there."""
  if len(image_shape) != 3:
    raise InputError(f'image_shape must be (H, W, C), got {tuple(image_shape)}')
  h, w, c = (int(s) for s in image_shape)
  if int(corners) != corners or not 1 <= corners <= len(poison.CORNERS):
    raise InputError(f'corners must be an integer in [1, {len(poison.CORNERS)}] (the first '
                     f'`corners` of {poison.CORNERS}), got {corners}')
  if int(size) != size or not 1 <= size <= min(h, w) - margin or margin < 0:
    raise InputError(f'patch size {size} with margin {margin} does not fit an image of {h}x{w}')
  if pattern == 'reference':
    if size != 3:
      raise InputError(f"pattern 'reference' is Turner et al.'s 3x3 patch; got size {size} "
                       "(use pattern='checkerboard' for other sizes)")
    left_patch = _TURNER_PATCH
  elif pattern == 'checkerboard':
    left_patch = (np.indices((size, size)).sum(0) % 2 == 0).astype(np.float32)
  else:
    raise InputError(f"unknown patch pattern {pattern!r}; expected 'reference' or 'checkerboard'")
  count = np.zeros((h, w), np.int32)
  on = np.zeros((h, w), np.float32)
  for corner in poison.CORNERS[:corners]:
    top = margin if corner.startswith('top') else h - margin - size
    left = margin if corner.endswith('left') else w - margin - size
    patch = left_patch if corner.endswith('left') else left_patch[:, ::-1]
    if pattern == 'checkerboard' and corner.startswith('bottom'):
      patch = patch[::-1]  # Keep the pixel at the image corner white for every size.
    count[top:top + size, left:left + size] += 1
    on[top:top + size, left:left + size] = patch
  if count.max() > 1:
    raise InputError(f'{corners} corner patches of size {size} (margin {margin}) overlap on an '
                     f'image of {h}x{w}')
  mask = np.repeat((count > 0).astype(np.float32)[..., None], c, axis=-1)
  signs = np.repeat(np.where(count > 0, 2.0 * on - 1.0, 0.0).astype(np.float32)[..., None],
                    c, axis=-1)
  return mask, signs


def label_consistent_trigger(
    key: jax.Array,
    image_shape: Sequence[int] = (32, 32, 3),
    size: int = 3,
    amplitude: float = 1.0,
    corners: int = 4,
    pattern: str = 'reference',
    margin: int = 0,
) -> poison.Trigger:
  """The Label-Consistent trigger: a small black/white patch in each corner.

  The patch replaces the pixels it covers (mask 1) with ``0.5 + amplitude/2``
  where the pattern is on and ``0.5 - amplitude/2`` where it is off, in every
  channel. At the default ``amplitude=1.0`` this is exactly the full-amplitude
  trigger of Turner et al. and BackdoorBox (white 1.0 / black 0.0, flush with
  the image corners). For ``amplitude < 1`` it is a fixed, lower-contrast
  grey pattern; the paper's "reduced amplitude" trigger is instead *additive*
  (``clip(x +- amplitude)``, so its visibility is bounded by ``amplitude``
  whatever the image) and cannot be written as a mask/pattern pair: use
  :func:`label_consistent_additive_trigger` for it. Both agree at amplitude 1.

  Args:
    key: unused (the trigger is deterministic); kept so the signature matches
      :func:`scaleup_jax.poison.badnets_trigger`.
    image_shape: ``(H, W, C)``.
    size: side of each square patch in pixels.
    amplitude: contrast in (0, 1]; 1 = black and white.
    corners: how many corners get a patch, taken in the order of
      :data:`scaleup_jax.poison.CORNERS` (1 = bottom right only, the paper's
      "bottom-right" trigger; 4 = the paper's "all-corners" trigger, the
      default, as in BackdoorBox's example).
    pattern: ``'reference'``: Turner et al.'s 3x3 patch
      ``[[1,0,0],[0,1,0],[1,0,1]]`` (mirrored left-right on the right-hand
      corners; requires ``size=3``); ``'checkerboard'``: a true
      ``size x size`` checkerboard whose pixel at the image corner is white.
      The two differ in one pixel per 3x3 corner.
    margin: pixels between each patch and the image border (0 in the paper).

  Returns:
    A :class:`scaleup_jax.poison.Trigger` with float32 ``mask`` and
    ``pattern`` of shape ``image_shape``; the pattern is 0 outside the mask.

  References:
    Turner, Tsipras, Madry, "Label-Consistent Backdoor Attacks", 2019,
    Sec. 4.3 / Fig. 3. https://arxiv.org/abs/1912.02771 ;
    MadryLab/label-consistent-backdoor-code ``poison_attack.py``;
    BackdoorBox ``tests/test_LabelConsistent.py``.
  """
  del key
  if not (np.isfinite(amplitude) and 0.0 < amplitude <= 1.0):
    raise InputError(f'amplitude must be in (0, 1], got {amplitude}')
  mask, signs = _corner_signs(image_shape, size, corners, pattern, margin)
  values = np.where(mask > 0, 0.5 + 0.5 * amplitude * signs, 0.0).astype(np.float32)
  return poison.Trigger(mask, values)


def label_consistent_additive_trigger(
    key: jax.Array,
    image_shape: Sequence[int] = (32, 32, 3),
    size: int = 3,
    amplitude: float = 1.0,
    corners: int = 4,
    pattern: str = 'reference',
    margin: int = 0,
) -> 'AdditiveTrigger':
  """Turner et al.'s reduced-amplitude trigger: ``clip(x +- amplitude, 0, 1)`` on the patches.

  The exact form of the paper's reduced-amplitude variant (``x + a`` where
  the pattern is on, ``x - a`` where it is off, clipped; the paper uses
  ``a`` in {16, 32, 64}/255 and 255/255). At ``amplitude=1`` it equals
  :func:`label_consistent_trigger`. Arguments as there.

  Returns:
    An :class:`AdditiveTrigger` whose ``delta`` is ``+-amplitude`` on the
    patches and 0 elsewhere.

  References:
    Turner, Tsipras, Madry, "Label-Consistent Backdoor Attacks", 2019,
    Sec. 4.3 (reduced amplitude). https://arxiv.org/abs/1912.02771
  """
  del key
  if not (np.isfinite(amplitude) and 0.0 < amplitude <= 1.0):
    raise InputError(f'amplitude must be in (0, 1], got {amplitude}')
  _, signs = _corner_signs(image_shape, size, corners, pattern, margin)
  return AdditiveTrigger((amplitude * signs).astype(np.float32))


# ------------------------------------------------------------------ additive trigger


@dataclasses.dataclass(frozen=True)
class AdditiveTrigger:
  """An additive trigger ``clip(x + delta, 0, 1)``; ``delta`` has the image shape (H, W, C).

  Used for TUAP (a targeted universal adversarial perturbation) and for the
  reduced-amplitude Label-Consistent trigger.
  """

  kind: ClassVar[str] = 'additive'
  delta: np.ndarray

  def __post_init__(self):
    delta = np.asarray(self.delta, np.float32)
    if delta.ndim != 3:
      raise InputError(f'delta must have shape (H, W, C), got {delta.shape}')
    if not np.all(np.isfinite(delta)) or np.abs(delta).max(initial=0.0) > 1.0:
      raise InputError(f'delta must be finite with values in [-1, 1], got range '
                       f'[{np.nanmin(delta)}, {np.nanmax(delta)}]')
    object.__setattr__(self, 'delta', delta)

  def apply(self, images):
    """Returns ``clip(images + delta, 0, 1)``.

    Args:
      images: float ``(..., H, W, C)`` in [0, 1]; numpy or jax (jittable).

    Returns:
      Triggered images, same shape, dtype and array type as ``images``.
    """
    if tuple(images.shape[-3:]) != self.delta.shape:
      raise InputError(f'trigger delta shape {self.delta.shape} does not match image shape '
                       f'{tuple(images.shape[-3:])}')
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise InputError(f'images must be float pixels in [0, 1], got dtype {images.dtype}')
    if isinstance(images, jax.Array):
      return jnp.clip(images + self.delta.astype(images.dtype), 0, 1)
    return np.clip(images + self.delta.astype(images.dtype), 0, 1).astype(images.dtype)

  def arrays(self) -> dict[str, np.ndarray]:
    return {'delta': np.asarray(self.delta)}

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> 'AdditiveTrigger':
    """Rebuilds the trigger from :meth:`arrays` (other keys are ignored)."""
    if 'delta' not in arrays:
      raise InputError(f"additive trigger arrays need a 'delta' entry, got keys {sorted(arrays)}")
    return cls(np.asarray(arrays['delta'], np.float32))


# ------------------------------------------------------------------ TUAP


@functools.partial(jax.jit, static_argnames=('apply_fn', 'batch_size'))
def _uap_step(key, variables, images, delta, target, eps, lr, *, apply_fn, batch_size):
  """One signed-gradient ascent step on the mean log p(target | clip(x + delta))."""
  idx = jax.random.choice(key, images.shape[0], (batch_size,), replace=False)
  x = images[idx]
  labels = jnp.full((batch_size,), target, jnp.int32)

  def objective(d):
    logits = apply_fn(variables, jnp.clip(x + d, 0.0, 1.0))
    return jnp.mean(_log_softmax_at(logits, labels)), logits

  (obj, logits), g = jax.value_and_grad(objective, has_aux=True)(delta)
  new = jnp.clip(delta + lr * jnp.sign(g), -eps, eps)
  hit = jnp.mean(jnp.argmax(logits, -1) == target)
  return new, obj, hit


def targeted_uap(
    key: jax.Array,
    apply_fn: ApplyFn,
    variables: Any,
    images: np.ndarray,
    target: int,
    eps: float = 8 / 255,
    steps: int = 300,
    batch_size: int = 128,
    lr: float = 1 / 255,
    progress: bool = True,
) -> np.ndarray:
  """A targeted universal adversarial perturbation (TUAP) of a clean model.

  Finds one ``delta`` (H, W, C) with ``||delta||_inf <= eps`` such that the
  model predicts ``target`` on ``clip(x + delta, 0, 1)`` for most ``x``:
  starting from 0, each step draws ``batch_size`` images without replacement
  from ``images`` and takes a signed-gradient ascent step on the batch mean
  of ``log p(target | clip(x + delta))``, then projects onto the eps ball:

      delta <- clip(delta + lr * sign(grad_delta mean log p_target), -eps, eps).

  This is the stochastic projected-gradient form of the universal trigger
  optimisation of Zhao et al. (their trigger-generation step minimises the
  target-class cross-entropy of ``x + delta`` over images of other classes).
  BackdoorBox's TUAP instead runs the DeepFool-based UAP of Moosavi-Dezfooli
  et al. with eps 0.031 on CIFAR-10; the budget here (8/255 ~ 0.0314) matches.
  The images should mostly come from non-target classes (target-class
  images are already classified as ``target`` and contribute little).

  The data set is moved to the device once; each step is one jitted call.

  Args:
    key: PRNG key for minibatch sampling.
    apply_fn: ``apply_fn(variables, images) -> logits (B, K)``, pixels in [0, 1].
    variables: model variables.
    images: ``(N, H, W, C)`` float32 in [0, 1].
    target: target class index.
    eps: L-inf radius of ``delta`` in pixel units (BackdoorBox: 0.031).
    steps: number of ascent steps.
    batch_size: images per step (clipped to N).
    lr: step size in pixel units (the sign step's magnitude).
    progress: show a tqdm bar with the running batch target rate.

  Returns:
    ``delta`` as a float32 numpy array ``(H, W, C)`` with values in
    ``[-eps, eps]``; wrap it in :class:`AdditiveTrigger` to use it.

  References:
    Zhao et al., "Clean-Label Backdoor Attacks on Video Recognition Models",
    CVPR 2020, Sec. 3.2. https://arxiv.org/abs/2003.03030 ;
    Moosavi-Dezfooli et al., "Universal adversarial perturbations", CVPR
    2017; BackdoorBox ``core/attacks/TUAP.py``, ``tests/test_TUAP.py``.
  """
  images = check_images(images)
  _check_budget(eps, lr, steps)
  if int(target) != target or target < 0:
    raise InputError(f'target must be a non-negative class index, got {target}')
  if int(batch_size) != batch_size or batch_size < 1:
    raise InputError(f'batch_size must be a positive integer, got {batch_size}')
  batch_size = min(int(batch_size), len(images))
  data = jnp.asarray(images, jnp.float32)
  delta = jnp.zeros(images.shape[1:], jnp.float32)
  eps_, lr_, target_ = jnp.float32(eps), jnp.float32(lr), jnp.int32(target)
  bar = tqdm(range(int(steps)), desc=f'TUAP -> {int(target)}', disable=not progress,
             unit='step', leave=False)
  hit = None
  for i in bar:
    delta, _, hit = _uap_step(jax.random.fold_in(key, i), variables, data, delta, target_, eps_,
                              lr_, apply_fn=apply_fn, batch_size=batch_size)
    if progress and (i % 10 == 9 or i == steps - 1):
      bar.set_postfix(batch_target_rate=f'{float(hit):.3f}')
  return np.asarray(delta, np.float32)


@functools.partial(jax.jit, static_argnames=('apply_fn',))
def _predict_with_delta(variables, images, delta, *, apply_fn):
  return scaleup.predict_labels(apply_fn, variables, jnp.clip(images + delta, 0.0, 1.0))


def uap_fooling_rate(
    apply_fn: ApplyFn,
    variables: Any,
    images: np.ndarray,
    delta: np.ndarray,
    target: int,
    labels: np.ndarray | None = None,
    batch_size: int = 256,
) -> float:
  """Fraction of ``clip(images + delta)`` that the model classifies as ``target``.

  Args:
    apply_fn: ``apply_fn(variables, images) -> logits (B, K)``.
    variables: model variables.
    images: ``(N, H, W, C)`` float32 in [0, 1].
    delta: ``(H, W, C)`` perturbation (e.g. from :func:`targeted_uap`).
    target: target class index.
    labels: optional ``(N,)`` true labels; when given, images whose label is
      ``target`` are left out (the usual attack-success-rate convention).
    batch_size: examples per compiled call (the last batch is padded).

  Returns:
    The targeted fooling rate in [0, 1], as a Python float.
  """
  images = check_images(images)
  delta = np.asarray(delta, np.float32)
  if delta.shape != images.shape[1:]:
    raise InputError(f'delta shape {delta.shape} does not match image shape {images.shape[1:]}')
  if labels is not None:
    labels = np.asarray(labels)
    _check_labels(labels, len(images))
    images = images[labels != target]
  if len(images) == 0:
    raise InputError('no images to evaluate the perturbation on (all are of the target class '
                     f'{target} or the array is empty)')
  d = jnp.asarray(delta)
  preds = map_batches(lambda x: _predict_with_delta(variables, x, d, apply_fn=apply_fn), images,
                      min(int(batch_size), len(images)))
  return float(np.mean(preds == target))
