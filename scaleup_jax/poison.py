"""Backdoor poisoning as pure, seeded functions.

A trigger is a pair ``(mask, pattern)`` of arrays of the image shape
``(H, W, C)`` in ``[0, 1]``; applying it to an image ``x`` gives

    x' = (1 - mask) * x + mask * pattern,

which covers BadNets (a binary patch mask) and Blended (a constant mask equal
to the blend ratio alpha). Indices to poison are chosen from an explicit PRNG
key, so the same key gives the same indices and bit-identical images.

The attacks by name (the full recipes, which call the trigger factories here)
are :data:`scaleup_jax.attacks.ATTACKS`, the one registry.

References:
  Gu et al., "BadNets: Identifying Vulnerabilities in the Machine Learning
  Model Supply Chain", 2017. https://arxiv.org/abs/1708.06733
  Chen et al., "Targeted Backdoor Attacks on Deep Learning Systems Using Data
  Poisoning", 2017 (Blended). https://arxiv.org/abs/1712.05526
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, ClassVar, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scaleup_jax.validation import InputError

CORNERS = ('bottom_right', 'bottom_left', 'top_right', 'top_left')


class TriggerLike(Protocol):
  """What every trigger provides (mask/pattern, warp, additive, encoder, ...).

  ``apply`` maps images ``(..., H, W, C)`` in [0, 1] to triggered images of the
  same shape and dtype (numpy in, numpy out; jax in, jax out, jittable);
  ``arrays`` returns every array needed to rebuild it with
  ``from_arrays``; ``kind`` names the class in :data:`TRIGGER_KINDS`.
  """

  kind: ClassVar[str]

  def apply(self, images): ...

  def arrays(self) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class Trigger:
  """A mask-and-pattern trigger; both arrays have the image shape (H, W, C)."""

  kind: ClassVar[str] = 'mask'
  mask: np.ndarray
  pattern: np.ndarray

  def apply(self, images):
    """Stamps the trigger on ``images`` of shape (..., H, W, C); see :func:`apply_trigger`."""
    return apply_trigger(images, self.mask, self.pattern)

  def arrays(self) -> dict[str, np.ndarray]:
    return {'mask': np.asarray(self.mask), 'pattern': np.asarray(self.pattern)}

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> 'Trigger':
    return cls(np.asarray(arrays['mask'], np.float32), np.asarray(arrays['pattern'], np.float32))


@dataclasses.dataclass(frozen=True)
class MultiTrigger:
  """Several triggers for one target; ``apply`` stamps trigger ``i`` on image ``i % k``.

  Used for the "several triggers, one target" configuration: at test time the
  poisoned set cycles through the triggers so each is measured.
  """

  kind: ClassVar[str] = 'multi'
  triggers: tuple

  def apply(self, images):
    xp = jnp if isinstance(images, jax.Array) else np
    if images.ndim == 3:
      return self.triggers[0].apply(images)
    n, k = images.shape[0], len(self.triggers)
    outs = [t.apply(images) for t in self.triggers]
    which = (np.arange(n) % k).reshape(-1, *([1] * (images.ndim - 1)))
    out = outs[0]
    for i in range(1, k):
      out = xp.where(which == i, outs[i], out)
    return out

  def arrays(self) -> dict[str, np.ndarray]:
    out = {'num_triggers': np.int64(len(self.triggers))}
    for i, t in enumerate(self.triggers):
      out[f'{i}:kind'] = np.asarray(t.kind)
      out.update({f'{i}:{k}': v for k, v in t.arrays().items()})
    return out

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> 'MultiTrigger':
    triggers = []
    for i in range(int(arrays['num_triggers'])):
      sub = {k.split(':', 1)[1]: v for k, v in arrays.items() if k.startswith(f'{i}:')}
      triggers.append(trigger_from_arrays(sub))
    return cls(tuple(triggers))


@dataclasses.dataclass(frozen=True)
class ExtraBackdoors:
  """Backdoors beside a run's main one: ``triggers[i]`` sends images to ``targets[i]``.

  Several infected labels (paper App. H) and the small extra poisonings of
  other labels in the paper's data-limited models (App. C, "Training details").
  The main backdoor stays in ``trigger.npz`` so every tool keeps seeing it; the
  extra ones are saved beside it (:func:`save_extra_backdoors`) and are
  selected for evaluation with :func:`scaleup_jax.checkpoint.select_backdoor`.

  Attributes:
    triggers: one trigger per extra backdoor.
    targets: its target label, one per trigger, distinct.
    poison_indices: the training images it poisoned, one sorted ``int64``
      array per trigger.
  """

  triggers: tuple
  targets: tuple
  poison_indices: tuple

  def __post_init__(self):
    if not len(self.triggers) == len(self.targets) == len(self.poison_indices):
      raise InputError(f'ExtraBackdoors: {len(self.triggers)} triggers, {len(self.targets)} '
                       f'targets and {len(self.poison_indices)} index arrays; they must match')

  def __len__(self) -> int:
    return len(self.triggers)

  def arrays(self) -> dict[str, np.ndarray]:
    out = MultiTrigger(tuple(self.triggers)).arrays()
    out['targets'] = np.asarray(self.targets, np.int64)
    out.update({f'poison_indices_{i}': np.asarray(idx, np.int64)
                for i, idx in enumerate(self.poison_indices)})
    return out

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> 'ExtraBackdoors':
    triggers = MultiTrigger.from_arrays(
        {k: v for k, v in arrays.items() if k[0].isdigit() or k == 'num_triggers'}).triggers
    targets = tuple(int(t) for t in np.asarray(arrays['targets']))
    return cls(triggers, targets,
               tuple(np.asarray(arrays[f'poison_indices_{i}']) for i in range(len(triggers))))


EXTRA_BACKDOORS_KIND = 'extra_backdoors'


def save_extra_backdoors(path, extra: ExtraBackdoors) -> None:
  """Writes ``extra`` to ``path`` (.npz) atomically, with its checksum."""
  from scaleup_jax import integrity
  integrity.save_npz_checked(path, EXTRA_BACKDOORS_KIND, **extra.arrays())


def load_extra_backdoors(path) -> ExtraBackdoors:
  """Reads a file written by :func:`save_extra_backdoors`.

  Raises:
    IntegrityError: naming the file, if it is missing, unreadable or altered.
  """
  from scaleup_jax import integrity
  return ExtraBackdoors.from_arrays(integrity.load_npz_checked(path, EXTRA_BACKDOORS_KIND))


# kind -> 'module:Class'; classes outside this module are imported on first use.
TRIGGER_KINDS = {
    'mask': 'scaleup_jax.poison:Trigger',
    'multi': 'scaleup_jax.poison:MultiTrigger',
    'warp': 'scaleup_jax.attacks.wanet:WarpTrigger',
    'additive': 'scaleup_jax.attacks.adversarial:AdditiveTrigger',
    'encoder': 'scaleup_jax.attacks.issba:EncoderTrigger',
}


def trigger_from_arrays(arrays: Mapping[str, Any]):
  """Rebuilds a trigger from its ``arrays()`` plus ``'kind'`` (default ``'mask'``)."""
  kind = str(np.asarray(arrays.get('kind', 'mask')))
  if kind not in TRIGGER_KINDS:
    raise InputError(f'unknown trigger kind {kind!r}; expected one of {sorted(TRIGGER_KINDS)}')
  module, name = TRIGGER_KINDS[kind].split(':')
  cls = getattr(importlib.import_module(module), name)
  return cls.from_arrays({k: v for k, v in arrays.items() if k != 'kind'})


def save_trigger(path, trigger, target: int, poison_indices=(), **extra) -> None:
  """Writes ``trigger`` (any kind), the target and poisoned indices to ``path`` (.npz).

  Written to a temporary file first and renamed, so a crash never leaves a
  half-written file in place of a good one; the file carries the digest of
  every array (:func:`scaleup_jax.integrity.save_npz_checked`, kind
  ``'trigger'``), checked by :func:`load_trigger`.
  """
  from scaleup_jax import integrity
  integrity.save_npz_checked(path, 'trigger', kind=np.asarray(trigger.kind),
                             target=np.int64(target),
                             poison_indices=np.asarray(poison_indices, np.int64),
                             **trigger.arrays(), **extra)


def load_trigger(path):
  """Reads a file written by :func:`save_trigger`; returns ``(trigger, target)``.

  Raises:
    IntegrityError: naming the file, if it is missing, unreadable or an array
      differs from its checksum. A file written before checksums existed loads
      after a one-line warning.
  """
  from scaleup_jax import integrity
  arrays = integrity.load_npz_checked(path, 'trigger')
  target = int(arrays.pop('target'))
  arrays.pop('poison_indices', None)
  return trigger_from_arrays(arrays), target


def apply_trigger(images, mask, pattern):
  """Returns ``(1 - mask) * images + mask * pattern``.

  Args:
    images: float array ``(..., H, W, C)`` in [0, 1] (numpy or jax).
    mask: ``(H, W, C)`` in [0, 1]; 1 where the trigger replaces the pixel.
    pattern: ``(H, W, C)`` in [0, 1].

  Returns:
    Triggered images of the same shape and dtype as ``images``.
  """
  xp = jnp if isinstance(images, jax.Array) else np
  if images.shape[-3:] != mask.shape or mask.shape != pattern.shape:
    raise InputError(
        f'trigger shapes mask {mask.shape} / pattern {pattern.shape} do not match '
        f'image shape {images.shape[-3:]}'
    )
  out = (1 - mask) * images + mask * pattern
  return xp.asarray(out, dtype=images.dtype)


PATCH_PATTERNS = ('random', 'white', 'black', 'checkerboard')


def badnets_trigger(
    key: jax.Array,
    image_shape: Sequence[int] = (32, 32, 3),
    size: int = 3,
    corner: str = 'bottom_right',
    margin: int = 1,
    pattern: str = 'random',
) -> Trigger:
  """A BadNets patch: a ``size`` x ``size`` square at a corner of the image.

  Args:
    key: PRNG key for the random-valued patch.
    image_shape: ``(H, W, C)``.
    size: side of the square patch in pixels.
    corner: one of :data:`CORNERS`.
    margin: pixels between the patch and the image border.
    pattern: ``'random'`` (uniform values, the default: a white 3x3 patch is
      known to evade SCALE-UP, since amplification leaves white unchanged; see
      BackdoorBox issue 75), ``'white'``, ``'black'`` or ``'checkerboard'``.

  Returns:
    A :class:`Trigger`.
  """
  h, w, c = image_shape
  if corner not in CORNERS:
    raise InputError(f'unknown corner {corner!r}; expected one of {CORNERS}')
  if not 1 <= size <= min(h, w) - margin:
    raise InputError(f'patch size {size} does not fit an image of {h}x{w} with margin {margin}')
  top = margin if corner.startswith('top') else h - margin - size
  left = margin if corner.endswith('left') else w - margin - size
  mask = np.zeros(image_shape, np.float32)
  mask[top : top + size, left : left + size, :] = 1.0
  if pattern == 'random':
    patch = np.asarray(jax.random.uniform(key, (size, size, c)), np.float32)
  elif pattern == 'white':
    patch = np.ones((size, size, c), np.float32)
  elif pattern == 'black':
    patch = np.zeros((size, size, c), np.float32)
  elif pattern == 'checkerboard':
    board = (np.indices((size, size)).sum(0) % 2).astype(np.float32)
    patch = np.repeat(board[..., None], c, axis=-1)
  else:
    raise InputError(f"unknown patch pattern {pattern!r}; expected one of {PATCH_PATTERNS}")
  full = np.zeros(image_shape, np.float32)
  full[top : top + size, left : left + size, :] = patch
  return Trigger(mask, full)


def blended_trigger(
    key: jax.Array,
    image_shape: Sequence[int] = (32, 32, 3),
    alpha: float = 0.2,
    pattern: np.ndarray | None = None,
) -> Trigger:
  """A Blended trigger: ``(1 - alpha) * x + alpha * pattern`` over the whole image.

  Args:
    key: PRNG key for the random pattern (used when ``pattern`` is None).
    image_shape: ``(H, W, C)``.
    alpha: blend ratio in [0, 1].
    pattern: optional ``(H, W, C)`` pattern in [0, 1]; uniform noise by default.
  """
  if not 0.0 <= alpha <= 1.0:
    raise InputError(f'blend ratio alpha must be in [0, 1], got {alpha}')
  if pattern is None:
    pattern = np.asarray(jax.random.uniform(key, tuple(image_shape)), np.float32)
  pattern = np.asarray(pattern, np.float32)
  mask = np.full(image_shape, alpha, np.float32)
  return Trigger(mask, pattern)


def draw_target(key: jax.Array, num_classes: int, avoid: Sequence[int] = ()) -> int:
  """Draws a backdoor target class uniformly from the classes not in ``avoid``.

  The paper draws its targets at random (Sec. 5.1, App. C); zoo v2 avoids the
  clean model's saturation class, the class amplified images fall into, since a
  target there makes SCALE-UP's data-limited mode blind (docs/reproduction.md).

  Args:
    key: PRNG key; the same key gives the same class.
    num_classes: number of classes ``K``.
    avoid: classes that may not be drawn.

  Returns:
    An ``int`` in ``[0, K)`` not in ``avoid``.

  Example:
    >>> k = jax.random.fold_in(jax.random.key(2023), 0)
    >>> t = draw_target(k, 10, avoid=(0,))
    >>> 1 <= t < 10
    True
  """
  allowed = np.setdiff1d(np.arange(num_classes), np.asarray(avoid, np.int64))
  if len(allowed) == 0:
    raise InputError(f'draw_target: avoid={tuple(avoid)} leaves none of {num_classes} classes')
  return int(allowed[int(jax.random.randint(key, (), 0, len(allowed)))])


def select_poison_indices(
    key: jax.Array,
    labels: np.ndarray,
    rate: float,
    target: int,
    source_classes: Sequence[int] | None = None,
    include_target: bool = False,
) -> np.ndarray:
  """Chooses which training examples to poison.

  Exactly ``round(rate * len(labels))`` indices are drawn uniformly without
  replacement from the candidates: examples whose label is in
  ``source_classes`` (all classes if None), excluding the target class unless
  ``include_target``.

  Args:
    key: PRNG key.
    labels: ``(N,)`` integer labels.
    rate: poisoning rate as a fraction of ``N``, in [0, 1].
    target: target label.
    source_classes: classes whose images may be poisoned (partial backdoor).
    include_target: also allow target-class images as candidates.

  Returns:
    Sorted ``int64`` indices, shape ``(round(rate * N),)``.
  """
  labels = np.asarray(labels)
  if not 0.0 <= rate <= 1.0:
    raise InputError(f'poisoning rate must be in [0, 1], got {rate}')
  candidate = np.ones(labels.shape, bool)
  if source_classes is not None:
    candidate &= np.isin(labels, np.asarray(source_classes))
  if not include_target:
    candidate &= labels != target
  candidates = np.flatnonzero(candidate)
  n = int(round(rate * len(labels)))
  if n > len(candidates):
    raise InputError(
        f'poisoning rate {rate} asks for {n} images but only {len(candidates)} '
        f'candidates match (target={target}, source_classes={source_classes})'
    )
  chosen = jax.random.choice(key, len(candidates), (n,), replace=False)
  return np.sort(candidates[np.asarray(chosen)])


def poison_dataset(images, labels, indices, trigger: Trigger, target: int):
  """Returns copies of ``images``/``labels`` with ``indices`` triggered and relabelled.

  Args:
    images: ``(N, H, W, C)`` float32 in [0, 1].
    labels: ``(N,)`` int.
    indices: indices to poison.
    trigger: the :class:`Trigger` to stamp.
    target: label assigned to poisoned examples.
  """
  images = np.array(images, copy=True)
  labels = np.array(labels, copy=True)
  images[indices] = trigger.apply(images[indices])
  labels[indices] = target
  return images, labels


def poisoned_test_set(images, labels, trigger: Trigger, target: int,
                      source_classes: Sequence[int] | None = None):
  """The poisoned test set: every test image whose true label is not ``target``
  (and, for a partial backdoor, is in ``source_classes``).

  Returns:
    ``(poisoned_images, true_labels, indices)`` where ``indices`` index the
    original test set.
  """
  labels = np.asarray(labels)
  keep = labels != target
  if source_classes is not None:
    keep &= np.isin(labels, np.asarray(source_classes))
  indices = np.flatnonzero(keep)
  return trigger.apply(np.asarray(images)[indices]), labels[indices], indices
