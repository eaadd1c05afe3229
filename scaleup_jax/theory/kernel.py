"""Nadaraya-Watson kernel regression with an RBF kernel (SCALE-UP Eq. 6).

Theorem 1 of SCALE-UP models a trained network as multivariate kernel
regression with a radial-basis-function kernel,

    phi(x) = sum_i K(x, x_i) y_i / sum_i K(x, x_i),
    K(x, x_i) = exp(-gamma * ||x - x_i||^2),        C(x) = argmax_k phi_k(x),

where ``y_i`` are one-hot labels. ``phi(x)`` is a convex combination of the
training labels, so ``phi_k(x)`` is the share of kernel mass that lands on
class ``k``.

Under amplification ``x -> n * x`` the squared distances grow like ``n^2``:
for ``n = 11`` and ``gamma * ||x||^2`` of order 10, every ``K(n x, x_i)``
underflows to 0 in float32 and the direct formula returns 0/0. Everything here
therefore works with log-kernels and a softmax over ``-gamma * d^2``, which is
the same estimator with the largest weight factored out.

References:
  Guo et al., "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection
  via Analyzing Scaled Prediction Consistency", ICLR 2023.
  https://arxiv.org/abs/2302.03251
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from scaleup_jax.validation import InputError


def _concrete(value):
  """``float(value)`` if ``value`` is concrete, else None (a tracer under jit)."""
  try:
    return float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def check_gamma(gamma) -> None:
  """Raises InputError unless ``gamma`` is a finite positive number.

  Tracers (``gamma`` passed through ``jax.jit``) are not checked.
  """
  value = _concrete(gamma)
  if value is not None and not (np.isfinite(value) and value > 0):
    raise InputError(f'RBF width gamma must be finite and > 0; got gamma={value}')


def check_scale(n) -> None:
  """Raises InputError unless the amplification ``n`` is finite and >= 1."""
  value = _concrete(n)
  if value is not None and not (np.isfinite(value) and value >= 1):
    raise InputError(f'amplification scale n must be finite and >= 1; got n={value}')


def squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
  """Pairwise squared Euclidean distances via ``||a||^2 + ||b||^2 - 2 a.b``.

  Args:
    a: ``(M, D)`` query points.
    b: ``(N, D)`` reference points.

  Returns:
    ``(M, N)`` array ``d2[i, j] = ||a_i - b_j||^2``, clamped at 0 (the
    expansion can go slightly negative in float32 for nearly equal points).

  Example:
    >>> squared_distances(jnp.zeros((1, 2)), jnp.ones((3, 2))).shape
    (1, 3)
  """
  a = jnp.asarray(a)
  b = jnp.asarray(b)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise InputError(f'expected a (M, D) and b (N, D) with the same D; got {a.shape} and {b.shape}')
  a2 = jnp.sum(a * a, axis=1)[:, None]
  b2 = jnp.sum(b * b, axis=1)[None, :]
  return jnp.maximum(a2 + b2 - 2.0 * (a @ b.T), 0.0)


def rbf_log_kernel(a: jax.Array, b: jax.Array, gamma) -> jax.Array:
  """``log K(a_i, b_j) = -gamma * ||a_i - b_j||^2``.

  Args:
    a: ``(M, D)``.
    b: ``(N, D)``.
    gamma: scalar > 0, the RBF width parameter.

  Returns:
    ``(M, N)`` log-kernel matrix (finite even where ``K`` underflows).
  """
  check_gamma(gamma)
  return -gamma * squared_distances(a, b)


def rbf_kernel(a: jax.Array, b: jax.Array, gamma) -> jax.Array:
  """``K(a_i, b_j) = exp(-gamma * ||a_i - b_j||^2)``, shape ``(M, N)``.

  May underflow to 0 for far-apart points; use :func:`rbf_log_kernel` or
  :func:`nadaraya_watson` when that matters.
  """
  return jnp.exp(rbf_log_kernel(a, b, gamma))


@jax.jit
def _nw_rbf(x, x_train, values, gamma):
  return jax.nn.softmax(-gamma * squared_distances(x, x_train), axis=-1) @ values


def nadaraya_watson(x: jax.Array, x_train: jax.Array, values: jax.Array, gamma) -> jax.Array:
  """RBF Nadaraya-Watson regression, SCALE-UP Eq. 6, numerically stable.

  Computes ``sum_i K(x, x_i) v_i / sum_i K(x, x_i)`` as a softmax over
  ``-gamma * ||x - x_i||^2``, so it stays finite when every kernel value
  underflows (large ``gamma`` or amplified inputs); in that limit it becomes
  the nearest-neighbour average.

  Args:
    x: ``(M, D)`` query points.
    x_train: ``(N, D)`` training inputs.
    values: ``(N, V)`` training targets; with one-hot labels ``(N, K)`` the
      result is ``phi(x)``, whose rows sum to 1.
    gamma: RBF width, scalar > 0.

  Returns:
    ``(M, V)`` array of kernel-weighted averages.

  Example:
    >>> x_train = jnp.array([[0.0], [1.0]])
    >>> y = jnp.eye(2)
    >>> phi = nadaraya_watson(jnp.array([[0.1]]), x_train, y, gamma=10.0)
    >>> int(phi.argmax())
    0

  References:
    Guo et al., ICLR 2023, Eq. 6. https://arxiv.org/abs/2302.03251
  """
  check_gamma(gamma)
  x = jnp.asarray(x, jnp.float32)
  x_train = jnp.asarray(x_train, jnp.float32)
  values = jnp.asarray(values, jnp.float32)
  if x.ndim != 2 or x_train.ndim != 2 or x.shape[1] != x_train.shape[1]:
    raise InputError(f'x (M, D) and x_train (N, D) must share D; got {x.shape} and {x_train.shape}')
  if values.ndim != 2 or values.shape[0] != x_train.shape[0]:
    raise InputError(f'values must be (N, V) with N={x_train.shape[0]}; got {values.shape}')
  return _nw_rbf(x, x_train, values, jnp.float32(gamma))


def one_hot(labels, num_classes: int) -> jax.Array:
  """``(N,)`` integer labels -> ``(N, num_classes)`` float32 one-hot rows."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise InputError(f'labels must lie in [0, {num_classes}); got range [{labels.min()}, {labels.max()}]')
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def amplify(x: jax.Array, n, clip: bool) -> jax.Array:
  """SCALE-UP's pixel-wise amplification ``n * x``, optionally clipped to [0, 1].

  Args:
    x: ``(..., D)`` inputs in [0, 1].
    n: scale, >= 1.
    clip: clip to [0, 1] as the detection method does (the theorem does not).

  Returns:
    Array of the shape of ``x``.
  """
  check_scale(n)
  out = n * jnp.asarray(x)
  return jnp.clip(out, 0.0, 1.0) if clip else out


def amplify_stack(x: jax.Array, scales, clip: bool) -> jax.Array:
  """All amplified copies at once: ``(M, D)`` -> ``(S, M, D)`` for S scales."""
  for n in np.asarray(scales).reshape(-1):
    check_scale(n)
  s = jnp.asarray(scales, jnp.float32).reshape(-1, 1, 1)
  out = s * jnp.asarray(x, jnp.float32)[None]
  return jnp.clip(out, 0.0, 1.0) if clip else out
