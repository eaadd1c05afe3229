"""Synthetic data for the kernel-regression toy of SCALE-UP's Theorem 1.

Inputs live in ``[0, 1]^D`` (think of a flattened grey image with D pixels).
Class structure: each class ``k`` has a prototype ``mu_k ~ U[0, 1]^D`` and a
sample of class ``k`` is

    x = (1 - s) * u + s * mu_k,        u ~ U[0, 1]^D,

with separation ``s`` in [0, 1] (``class_sep``). ``s = 0`` gives uniform inputs
with a random labelling (nothing to learn), ``s = 1`` collapses each class to
its prototype. Inputs stay in [0, 1] for every ``s``. Labels are exactly
balanced (``N / K`` per class, in a random order), as the theorem assumes
labels uniformly distributed over the K classes.

A trigger is a mask ``m`` on the last ``size`` coordinates (the analogue of a
corner patch) and a pattern ``t`` there: ``'white'`` (t = 1), ``'black'``
(t = 0) or ``'random'`` (each trigger pixel 0 or 1 with probability 1/2, a
BadNets-style black-and-white patch). A poisoned sample is
``x' = (1 - m) * x + m * t`` relabelled to the target class ``y_t``.

All randomness flows from explicit PRNG keys. :func:`draw_benign` uses fixed
sub-keys for the prototypes, the benign training set, the pool the poisoned
samples are drawn from, the test set and the trigger pattern, and
:func:`poison` is deterministic, so problems built from the same key with
different poisoning ratios, trigger sizes or patterns share their benign data
(common random numbers), and sweeps compare like with like.

References:
  Guo et al., "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection
  via Analyzing Scaled Prediction Consistency", ICLR 2023.
  https://arxiv.org/abs/2302.03251
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from scaleup_jax.validation import InputError

PATTERNS = ('white', 'black', 'random')


@dataclasses.dataclass(frozen=True)
class ToyProblem:
  """A poisoned training set and benign/poisoned test inputs.

  Attributes:
    x_train: ``(N_b + N_p, D)`` training inputs, benign first.
    y_train: ``(N_b + N_p,)`` int labels; the poisoned ones equal ``target``.
    is_poison: ``(N_b + N_p,)`` bool, True for the N_p poisoned samples.
    x_test: ``(M, D)`` benign test inputs.
    y_test: ``(M,)`` their labels.
    x_test_poison: ``(M_p, D)`` the benign test inputs whose label is not
      ``target``, with the trigger stamped on.
    y_test_poison_source: ``(M_p,)`` their original labels.
    mask: ``(D,)`` trigger mask in {0, 1}.
    pattern: ``(D,)`` trigger pattern in [0, 1].
    target: the target label ``y_t``.
    num_classes: K.
  """

  x_train: np.ndarray
  y_train: np.ndarray
  is_poison: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  x_test_poison: np.ndarray
  y_test_poison_source: np.ndarray
  mask: np.ndarray
  pattern: np.ndarray
  target: int
  num_classes: int

  @property
  def num_benign(self) -> int:
    return int((~self.is_poison).sum())

  @property
  def num_poison(self) -> int:
    return int(self.is_poison.sum())


def class_prototypes(key: jax.Array, num_classes: int, dim: int) -> np.ndarray:
  """``(num_classes, dim)`` prototypes ``mu_k ~ U[0, 1]^dim``."""
  if num_classes < 2 or dim < 1:
    raise InputError(f'need num_classes >= 2 and dim >= 1; got num_classes={num_classes}, dim={dim}')
  return np.asarray(jax.random.uniform(key, (num_classes, dim)), np.float32)


def sample_benign(key: jax.Array, prototypes: np.ndarray, num: int, class_sep: float):
  """Draws ``num`` benign samples with exactly balanced labels.

  Args:
    key: PRNG key.
    prototypes: ``(K, D)`` class prototypes in [0, 1].
    num: number of samples; labels are ``arange(num) % K`` shuffled, so each
      class gets ``num // K`` or ``num // K + 1`` samples.
    class_sep: ``s`` in [0, 1]; ``x = (1 - s) u + s mu_y``.

  Returns:
    ``(x, y)`` with ``x`` float32 ``(num, D)`` in [0, 1] and ``y`` int32 ``(num,)``.

  Example:
    >>> protos = class_prototypes(jax.random.key(0), 10, 64)
    >>> x, y = sample_benign(jax.random.key(1), protos, 100, 0.5)
    >>> x.shape, np.bincount(y).tolist() == [10] * 10
    ((100, 64), True)
  """
  if not 0.0 <= class_sep <= 1.0:
    raise InputError(f'class_sep must be in [0, 1]; got {class_sep}')
  if num < 1:
    raise InputError(f'num must be >= 1; got {num}')
  k_perm, k_u = jax.random.split(key)
  num_classes, dim = prototypes.shape
  y = np.arange(num) % num_classes
  y = y[np.asarray(jax.random.permutation(k_perm, num))].astype(np.int32)
  u = np.asarray(jax.random.uniform(k_u, (num, dim)), np.float32)
  x = (1.0 - class_sep) * u + class_sep * np.asarray(prototypes, np.float32)[y]
  return np.clip(x, 0.0, 1.0).astype(np.float32), y


def make_trigger(key: jax.Array, dim: int, size: int, pattern: str = 'white'):
  """A trigger on the last ``size`` of ``dim`` coordinates.

  Args:
    key: PRNG key (used by ``pattern='random'``).
    dim: input dimension D.
    size: number of trigger coordinates, 1 <= size <= D.
    pattern: one of :data:`PATTERNS`.

  Returns:
    ``(mask, pattern)``, both float32 ``(D,)``; ``pattern`` is 0 off the mask.
  """
  if not 1 <= size <= dim:
    raise InputError(f'trigger size must be in [1, dim={dim}]; got size={size}')
  mask = np.zeros((dim,), np.float32)
  mask[dim - size:] = 1.0
  if pattern == 'white':
    values = np.ones((size,), np.float32)
  elif pattern == 'black':
    values = np.zeros((size,), np.float32)
  elif pattern == 'random':
    values = np.asarray(jax.random.bernoulli(key, 0.5, (size,)), np.float32)
  else:
    raise InputError(f'unknown trigger pattern {pattern!r}; expected one of {PATTERNS}')
  full = np.zeros((dim,), np.float32)
  full[dim - size:] = values
  return mask, full


def apply_trigger(x, mask, pattern):
  """``x' = (1 - m) * x + m * t`` for ``x`` of shape ``(..., D)``."""
  return (1.0 - mask) * np.asarray(x, np.float32) + mask * pattern


def check_ratio(ratio) -> None:
  """Raises InputError unless the poisoning ratio ``N_p / N_b`` is in (0, 1]."""
  if not (np.isfinite(ratio) and 0.0 < ratio <= 1.0):
    raise InputError(f'poisoning ratio N_p/N_b must be in (0, 1]; got ratio={ratio}')


@dataclasses.dataclass(frozen=True)
class BenignDraws:
  """The benign randomness of a toy problem, shared by all poisoning settings.

  Attributes:
    x_benign: ``(N_b, D)`` benign training inputs; ``y_benign`` ``(N_b,)``.
    x_pool: ``(N_b, D)`` inputs the poisoned samples are made from.
    x_test: ``(M, D)`` benign test inputs; ``y_test`` ``(M,)``.
    trigger_key: key for random trigger patterns.
    num_classes: K.
  """

  x_benign: np.ndarray
  y_benign: np.ndarray
  x_pool: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  trigger_key: jax.Array
  num_classes: int


def draw_benign(key: jax.Array, *, dim: int = 64, num_classes: int = 10, num_benign: int = 1000,
                num_test: int = 200, class_sep: float = 0.5) -> BenignDraws:
  """Draws everything of a toy problem that does not depend on the attack.

  Args:
    key: PRNG key; sub-keys ``fold_in(key, i)`` for prototypes, benign
      training set, poison pool, test set and trigger pattern.
    dim: D.
    num_classes: K.
    num_benign: N_b (also the size of the poison pool, so N_p <= N_b).
    num_test: M benign test inputs.
    class_sep: see :func:`sample_benign`.

  Returns:
    A :class:`BenignDraws`.
  """
  k_proto, k_train, k_pool, k_test, k_trig = (jax.random.fold_in(key, i) for i in range(5))
  protos = class_prototypes(k_proto, num_classes, dim)
  x_b, y_b = sample_benign(k_train, protos, num_benign, class_sep)
  x_pool, _ = sample_benign(k_pool, protos, num_benign, class_sep)
  x_test, y_test = sample_benign(k_test, protos, num_test, class_sep)
  return BenignDraws(x_b, y_b, x_pool, x_test, y_test, k_trig, num_classes)


def poison(draws: BenignDraws, *, ratio: float = 1.0, trigger_size: int = 8,
           trigger_pattern: str = 'white', target: int = 0) -> ToyProblem:
  """Adds ``N_p = max(1, round(ratio * N_b))`` poisoned samples to ``draws``.

  The poisoned samples are the first N_p pool inputs (labels uniform over all
  K classes, the target class included), stamped with the trigger and
  relabelled ``target``; a smaller ratio thus gives a subset of a larger one.

  Args:
    draws: from :func:`draw_benign`.
    ratio: N_p / N_b in (0, 1].
    trigger_size: number of trigger coordinates.
    trigger_pattern: one of :data:`PATTERNS`.
    target: target label in [0, K).

  Returns:
    A :class:`ToyProblem`.
  """
  check_ratio(ratio)
  k = draws.num_classes
  if not 0 <= target < k:
    raise InputError(f'target must be in [0, {k}); got {target}')
  num_benign, dim = draws.x_benign.shape
  num_poison = max(1, int(round(ratio * num_benign)))
  mask, pattern = make_trigger(draws.trigger_key, dim, trigger_size, trigger_pattern)
  x_p = apply_trigger(draws.x_pool[:num_poison], mask, pattern)
  keep = draws.y_test != target
  return ToyProblem(
      x_train=np.concatenate([draws.x_benign, x_p]),
      y_train=np.concatenate([draws.y_benign, np.full((num_poison,), target, np.int32)]),
      is_poison=np.concatenate([np.zeros(num_benign, bool), np.ones(num_poison, bool)]),
      x_test=draws.x_test,
      y_test=draws.y_test,
      x_test_poison=apply_trigger(draws.x_test[keep], mask, pattern),
      y_test_poison_source=draws.y_test[keep],
      mask=mask,
      pattern=pattern,
      target=target,
      num_classes=k,
  )


def make_problem(
    key: jax.Array,
    *,
    dim: int = 64,
    num_classes: int = 10,
    num_benign: int = 1000,
    num_test: int = 200,
    ratio: float = 1.0,
    class_sep: float = 0.5,
    trigger_size: int = 8,
    trigger_pattern: str = 'white',
    target: int = 0,
) -> ToyProblem:
  """Builds a poisoned training set and test inputs: :func:`draw_benign` + :func:`poison`.

  Args:
    key: PRNG key; the same key gives the same problem, and problems from the
      same key that differ only in the attack share their benign data.
    dim: D.
    num_classes: K.
    num_benign: N_b.
    num_test: number of benign test inputs (poisoned test inputs are those of
      them whose label is not ``target``, triggered).
    ratio: N_p / N_b in (0, 1].
    class_sep: see :func:`sample_benign`.
    trigger_size: number of trigger coordinates.
    trigger_pattern: one of :data:`PATTERNS`.
    target: target label in [0, K).

  Returns:
    A :class:`ToyProblem`.

  Example:
    >>> p = make_problem(jax.random.key(0), dim=16, num_benign=100, ratio=0.1)
    >>> p.x_train.shape, p.num_poison
    ((110, 16), 10)
  """
  check_ratio(ratio)
  draws = draw_benign(key, dim=dim, num_classes=num_classes, num_benign=num_benign,
                      num_test=num_test, class_sep=class_sep)
  return poison(draws, ratio=ratio, trigger_size=trigger_size, trigger_pattern=trigger_pattern,
                target=target)
