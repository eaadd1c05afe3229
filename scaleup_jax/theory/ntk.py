"""Empirical neural tangent kernel of a small Flax MLP, and NTK regression.

SCALE-UP motivates its RBF model by the observation that wide networks behave
like kernel machines. This module tests that bridge with the kernel a real
(small) network actually has at initialisation: the empirical NTK

    Theta(x, x') = <d f(x; theta) / d theta, d f(x'; theta) / d theta>,

of a scalar-output MLP ``f``. (For a K-output network with independent
read-outs the infinite-width NTK is ``Theta (x) I_K``; the scalar kernel is the
usual stand-in for it.)

NTK values can be negative and do not sum to anything meaningful, so the
Nadaraya-Watson form of Eq. 6 does not apply directly. We use the predictor of
a network trained to convergence by gradient flow on the squared loss in the
linearised (NTK) regime, with the initial output dropped and a small ridge:

    phi(x) = Theta(x, X) (Theta(X, X) + lambda I)^{-1} Y,   C(x) = argmax phi(x),

with one-hot ``Y`` (N, K). This is kernel ridge regression with the NTK;
``phi`` is no longer a convex combination, so ``phi_t >= 1/2`` is not the
right yardstick for it (compare argmaxes and margins instead).

The Gram matrix uses per-input Jacobians from ``jax.jacrev`` over the
parameters (vmapped, in chunks of inputs); predictions never materialise query
Jacobians: with ``v_k = J(X)^T alpha_k``, ``phi_k(x) = J(x) v_k`` is a
``jax.jvp`` of the network along ``v_k``.

References:
  Guo et al., "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection
  via Analyzing Scaled Prediction Consistency", ICLR 2023.
  https://arxiv.org/abs/2302.03251
  Jacot et al., "Neural Tangent Kernel: Convergence and Generalization in
  Neural Networks", NeurIPS 2018. https://arxiv.org/abs/1806.07572
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from scaleup_jax.validation import InputError


class MLP(nn.Module):
  """Fully connected ReLU network with a scalar output.

  Attributes:
    features: widths of the hidden layers.
    bias_init_std: standard deviation of the (normal) bias initialisation;
      0 gives Flax's default zero biases, which make the network positively
      homogeneous in ``x`` at initialisation.
  """

  features: Sequence[int] = (128, 128)
  bias_init_std: float = 0.1

  @nn.compact
  def __call__(self, x):
    """Maps ``(N, D)`` inputs to ``(N,)`` outputs."""
    bias_init = (nn.initializers.normal(self.bias_init_std) if self.bias_init_std > 0
                 else nn.initializers.zeros_init())
    for width in self.features:
      x = nn.relu(nn.Dense(width, bias_init=bias_init)(x))
    return nn.Dense(1, bias_init=bias_init)(x)[..., 0]


def init_mlp(key: jax.Array, dim: int, features: Sequence[int] = (128, 128),
             bias_init_std: float = 0.1):
  """Initialises an :class:`MLP` for ``dim``-dimensional inputs.

  Args:
    key: PRNG key for the parameters.
    dim: input dimension D.
    features: hidden widths.
    bias_init_std: see :class:`MLP`.

  Returns:
    ``(apply_fn, params)`` with ``apply_fn(params, x)`` mapping ``(N, D)`` to ``(N,)``.

  Example:
    >>> apply_fn, params = init_mlp(jax.random.key(0), 4, (8,))
    >>> apply_fn(params, jnp.ones((3, 4))).shape
    (3,)
  """
  if dim < 1 or not features or min(features) < 1:
    raise InputError(f'need dim >= 1 and positive widths; got dim={dim}, features={tuple(features)}')
  model = MLP(features=tuple(features), bias_init_std=bias_init_std)
  params = model.init(key, jnp.zeros((1, dim), jnp.float32))
  return model.apply, params


def _flat_jacobian_fn(apply_fn):
  def single(params, xi):
    return apply_fn(params, xi[None])[0]

  @jax.jit
  def jac(params, x):
    # Per-example jacrev, vmapped: O(N P), whereas jacrev of the batched
    # function would pull back N cotangents through the whole batch (O(N^2 P)).
    tree = jax.vmap(jax.jacrev(single), in_axes=(None, 0))(params, x)
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.concatenate([leaf.reshape(x.shape[0], -1) for leaf in leaves], axis=1)
  return jac


_JAC_CACHE: dict[Any, Callable] = {}


def flat_jacobian(apply_fn, params, x, chunk: int = 256) -> jax.Array:
  """Per-input gradients of the scalar output, flattened over parameters.

  Inputs are processed ``chunk`` at a time (the last chunk zero-padded, so
  there is one compilation per network and chunk size).

  Args:
    apply_fn: ``apply_fn(params, x)`` mapping ``(N, D)`` to ``(N,)``.
    params: parameter pytree with P scalars in total.
    x: ``(N, D)`` inputs.
    chunk: inputs per call (bounds memory at ``chunk * P`` floats).

  Returns:
    ``(N, P)`` Jacobian ``J[i] = d f(x_i) / d theta``, columns in
    ``jax.flatten_util.ravel_pytree(params)`` order.
  """
  if apply_fn not in _JAC_CACHE:
    _JAC_CACHE[apply_fn] = _flat_jacobian_fn(apply_fn)
  jac = _JAC_CACHE[apply_fn]
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 2 or x.shape[0] == 0:
    raise InputError(f'x must be a non-empty (N, D) array; got shape {x.shape}')
  n = x.shape[0]
  chunk = min(chunk, n)
  pad = (-n) % chunk
  xp = jnp.concatenate([x, jnp.zeros((pad, x.shape[1]), x.dtype)]) if pad else x
  return jnp.concatenate([jac(params, xp[i:i + chunk]) for i in range(0, n + pad, chunk)])[:n]


def empirical_ntk(apply_fn, params, x1, x2=None, chunk: int = 512) -> jax.Array:
  """The empirical NTK ``Theta(x1_i, x2_j) = J(x1_i) . J(x2_j)``.

  Args:
    apply_fn: scalar-output network, ``(N, D) -> (N,)``.
    params: its parameters.
    x1: ``(N1, D)``.
    x2: ``(N2, D)``; defaults to ``x1`` (the Gram matrix).
    chunk: see :func:`flat_jacobian`.

  Returns:
    ``(N1, N2)`` kernel matrix (symmetric PSD when ``x2`` is None).

  Example:
    >>> apply_fn, params = init_mlp(jax.random.key(0), 4, (8,))
    >>> empirical_ntk(apply_fn, params, jnp.ones((3, 4))).shape
    (3, 3)
  """
  j1 = flat_jacobian(apply_fn, params, x1, chunk)
  j2 = j1 if x2 is None else flat_jacobian(apply_fn, params, x2, chunk)
  return j1 @ j2.T


@dataclasses.dataclass(frozen=True)
class NTKRegressor:
  """``phi(x) = Theta(x, X) coeffs`` evaluated with one ``jax.jvp`` per output.

  Attributes:
    apply_fn: the network.
    params: its parameters (the linearisation point).
    directions: parameter pytree whose leaves have a leading axis V;
      ``directions[k] = J(X)^T coeffs[:, k]``.
    coeffs: ``(N, V)`` coefficients (for ridge regression, the dual weights
      ``alpha``).
  """

  apply_fn: Callable
  params: Any
  directions: Any
  coeffs: jax.Array

  def __call__(self, x, chunk: int = 4096) -> jax.Array:
    """Returns ``(M, V)`` predictions for ``(M, D)`` inputs."""
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2:
      raise InputError(f'x must be (M, D); got shape {x.shape}')
    outs = [_ntk_predict(self.apply_fn, self.params, self.directions, x[i:i + chunk])
            for i in range(0, x.shape[0], chunk)]
    return jnp.concatenate(outs)


@jax.jit(static_argnums=0)
def _ntk_predict(apply_fn, params, directions, x):
  def along(direction):
    return jax.jvp(lambda p: apply_fn(p, x), (params,), (direction,))[1]
  return jax.vmap(along)(directions).T


def fit_ntk_regression(apply_fn, params, x_train, values, ridge: float = 1e-3, *,
                       jacobian=None, gram=None) -> NTKRegressor:
  """Kernel ridge regression with the empirical NTK.

  Solves ``(Theta(X, X) + lambda I) alpha = values`` (in float64) with
  ``lambda = ridge * trace(Theta) / N`` (a ridge relative to the mean
  diagonal, so it does not depend on the kernel's overall scale).

  Args:
    apply_fn: scalar-output network.
    params: its parameters.
    x_train: ``(N, D)`` training inputs.
    values: ``(N, V)`` targets, e.g. one-hot labels.
    ridge: relative ridge, > 0.
    jacobian: optional precomputed ``(N, P)`` :func:`flat_jacobian` of
      ``x_train`` (sweeps reuse one Jacobian for nested training sets).
    gram: optional precomputed ``(N, N)`` Gram matrix ``J J^T``.

  Returns:
    An :class:`NTKRegressor`; ``reg(x)`` is ``(M, V)``.

  Example:
    >>> apply_fn, params = init_mlp(jax.random.key(0), 2, (16,))
    >>> x = jax.random.uniform(jax.random.key(1), (20, 2))
    >>> reg = fit_ntk_regression(apply_fn, params, x, jax.nn.one_hot(x[:, 0] > 0.5, 2))
    >>> reg(x).shape
    (20, 2)
  """
  if not (np.isfinite(ridge) and ridge > 0):
    raise InputError(f'ridge must be finite and > 0; got ridge={ridge}')
  x_train = jnp.asarray(x_train, jnp.float32)
  values = jnp.asarray(values, jnp.float32)
  n = x_train.shape[0]
  if values.ndim != 2 or values.shape[0] != n:
    raise InputError(f'values must be (N, V) with N={n}; got {values.shape}')
  jac = flat_jacobian(apply_fn, params, x_train) if jacobian is None else jnp.asarray(jacobian)
  if jac.shape[0] != n:
    raise InputError(f'jacobian has {jac.shape[0]} rows for N={n} training inputs')
  gram = jac @ jac.T if gram is None else jnp.asarray(gram)
  if gram.shape != (n, n):
    raise InputError(f'gram must be ({n}, {n}); got {gram.shape}')
  return ntk_linear_predictor(apply_fn, params, jac, ridge_dual_coefficients(gram, values, ridge))


def ridge_dual_coefficients(gram, values, ridge: float = 1e-3) -> jax.Array:
  """``alpha = (G + lambda I)^{-1} values`` with ``lambda = ridge * trace(G) / N``.

  The N x N solve runs in float64 NumPy: more accurate than a float32
  Cholesky, and free of per-N compilation.

  Args:
    gram: ``(N, N)`` symmetric PSD kernel matrix.
    values: ``(N, V)`` targets.
    ridge: relative ridge, > 0.

  Returns:
    ``(N, V)`` float32 dual coefficients.
  """
  if not (np.isfinite(ridge) and ridge > 0):
    raise InputError(f'ridge must be finite and > 0; got ridge={ridge}')
  gram64 = np.asarray(gram, np.float64)
  n = gram64.shape[0]
  if gram64.shape != (n, n) or np.shape(values)[0] != n:
    raise InputError(f'gram must be (N, N) and values (N, V); got {gram64.shape} and {np.shape(values)}')
  lam = ridge * np.trace(gram64) / n
  alpha = np.linalg.solve(gram64 + lam * np.eye(n), np.asarray(values, np.float64))
  if not np.all(np.isfinite(alpha)):
    raise FloatingPointError(f'NTK ridge solve produced non-finite values (ridge={ridge}, N={n}); raise the ridge')
  return jnp.asarray(alpha, jnp.float32)


def ntk_linear_predictor(apply_fn, params, jacobian, coeffs) -> NTKRegressor:
  """The predictor ``x -> Theta(x, X) @ coeffs`` without forming ``Theta(x, X)``.

  Args:
    apply_fn: scalar-output network.
    params: its parameters.
    jacobian: ``(N, P)`` :func:`flat_jacobian` of the training inputs X.
    coeffs: ``(N, V)`` coefficients (dual weights, or raw targets for
      Nadaraya-Watson sums).

  Returns:
    An :class:`NTKRegressor` computing ``J(x) (J(X)^T coeffs)``, shape ``(M, V)``.
  """
  jacobian = jnp.asarray(jacobian, jnp.float32)
  coeffs = jnp.asarray(coeffs, jnp.float32)
  if coeffs.ndim != 2 or coeffs.shape[0] != jacobian.shape[0]:
    raise InputError(f'coeffs must be (N, V) with N={jacobian.shape[0]}; got {coeffs.shape}')
  unravel = jax.flatten_util.ravel_pytree(params)[1]
  directions = jax.vmap(unravel)((jacobian.T @ coeffs).T)  # leaves (V, *param_shape)
  return NTKRegressor(apply_fn, params, directions, coeffs)


def ntk_nadaraya_watson(apply_fn, params, x_train, values, *, jacobian=None) -> Callable:
  """SCALE-UP Eq. 6 with the empirical NTK in place of the RBF kernel.

  ``phi(x) = sum_i Theta(x, x_i) v_i / sum_i Theta(x, x_i)``. This is only a
  weighted average where ``Theta(x, x_i) > 0``; for ReLU MLPs on inputs in the
  positive orthant that is the typical case (check with
  :func:`empirical_ntk` on a sample), but it is not guaranteed, so the
  returned function also reports the denominator.

  Args:
    apply_fn: scalar-output network.
    params: its parameters.
    x_train: ``(N, D)`` training inputs.
    values: ``(N, V)`` targets.
    jacobian: optional precomputed ``(N, P)`` Jacobian of ``x_train``.

  Returns:
    ``predict(x) -> (phi, denom)`` with ``phi`` ``(M, V)`` and ``denom`` ``(M,)``.
  """
  values = jnp.asarray(values, jnp.float32)
  jac = flat_jacobian(apply_fn, params, x_train) if jacobian is None else jnp.asarray(jacobian)
  ones = jnp.ones((values.shape[0], 1), jnp.float32)
  reg = ntk_linear_predictor(apply_fn, params, jac, jnp.concatenate([values, ones], axis=1))

  def predict(x):
    out = reg(x)
    return out[:, :-1] / out[:, -1:], out[:, -1]
  return predict
