"""IBD-PSC: parameter-oriented scaling consistency (white box).

Amplifying the affine parameters (``scale`` gamma and ``bias`` beta) of a
model's last BatchNorm layers by a factor ``omega`` quickly destroys its
predictions on benign inputs, while poisoned inputs keep their (target) label
with high confidence. With ``f_1..f_n`` such parameter-amplified models and
``y = argmax f(x)`` the original prediction, the PSC value is

    PSC(x) = (1/n) sum_i softmax(f_i(x))[y],

and ``x`` is flagged as poisoned when ``PSC(x) > T`` (higher = poisoned).

Layer selection (the paper's Algorithm 1, as in the authors' BackdoorBox code):
BN layers are ordered as the forward pass calls them. Starting from the last
one, amplify the last ``k = 1, 2, ...`` BN layers and measure the top-1 error
of the amplified model on the defender's benign images; ``k*`` is the first
``k`` whose error exceeds ``xi``. The ``n`` amplified models then amplify the
last ``k* + 1, k* + 2, ..., k* + n`` layers (capped at the number of BN
layers). Each amplified model multiplies the selected layers' ``scale`` and
``bias`` by ``omega`` and nothing else (running statistics, convolutions and
the dense head are untouched).

Implementation: an amplification is a pure function of the parameter tree
and a vector of per-layer factors (:func:`amplify_bn`); the ``n`` factor
vectors form an ``(n, L)`` array and the model is vmapped over it, so the
``n`` models run as one batched computation (no copies of the model).

Defaults (paper / BackdoorBox ``IBD_PSC``): ``omega = 1.5``, ``n = 5``,
``xi = 0.6`` (error-rate threshold), ``T = 0.9`` (flagging threshold, unused
for AUROC). Needs: white-box parameters (BN ``scale``/``bias``), softmax
probabilities, and the defender's benign images (with labels if available;
without them the error is measured against the unamplified model's
predictions, which agree with the labels on the images it classifies
correctly).

Deviation: if no ``k < L`` reaches the error threshold (BackdoorBox then fails),
we use ``k* = L - n`` (the ``n`` largest layer sets) and record
``start_found=False`` in the detector's config.

References:
  Hou, Feng, Hua, Luo, Zhang, Li. "IBD-PSC: Input-level Backdoor Detection via
  Parameter-oriented Scaling Consistency". ICML 2024.
  https://arxiv.org/abs/2405.09786
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scaleup_jax.baselines import common
from scaleup_jax.batching import map_batches
from scaleup_jax.validation import InputError

DEFAULT_OMEGA = 1.5
DEFAULT_N = 5
DEFAULT_XI = 0.6
DEFAULT_T = 0.9
BN_LEAVES = ('scale', 'bias')

Path = tuple  # module path inside variables['params'], e.g. ('BasicBlock_0', 'BatchNorm_1')


def bn_layer_paths(apply_fn: Callable, variables, image_shape) -> list[Path]:
  """Paths of the Flax ``BatchNorm`` modules in the order the forward pass calls them.

  Records calls with :func:`flax.linen.intercept_methods` while tracing
  ``apply_fn`` abstractly (``jax.eval_shape`` under ``jax.disable_jit``, so
  cached traces cannot hide the calls; nothing is computed). The
  parameter dictionary's own key order is alphabetical, not the layer order,
  so it cannot be used.

  Args:
    apply_fn: ``(variables, images) -> logits`` of a Flax model.
    variables: its variables (or their shapes).
    image_shape: ``(H, W, C)``.

  Returns:
    Module paths (tuples of names), first called first; a module called twice
    is listed once.
  """
  seen: list[Path] = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == '__call__':
      path = tuple(context.module.path)
      if path not in seen:
        seen.append(path)
    return next_fun(*args, **kwargs)

  # A fresh wrapper and disable_jit: JAX caches traces by function, and a cached
  # trace (of apply_fn, or of a jitted function inside it) would skip the
  # interceptor and find no layers.
  with nn.intercept_methods(record), jax.disable_jit():
    jax.eval_shape(lambda v, x: apply_fn(v, x), variables,
                   jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return seen


def _get(tree, path):
  for name in path:
    tree = tree[name]
  return tree


def _replace(tree, path, fn):
  """Copy of nested mapping ``tree`` with ``fn`` applied to the node at ``path``."""
  if not path:
    return fn(tree)
  out = dict(tree)
  out[path[0]] = _replace(tree[path[0]], path[1:], fn)
  return out


def amplify_bn(variables, factors, bn_paths: Sequence[Path]):
  """Multiplies the ``scale`` and ``bias`` of BN layer ``l`` by ``factors[l]``.

  Pure and traceable: ``factors`` may be a traced ``(L,)`` array, so the
  function can be vmapped over a stack of factor vectors.

  Args:
    variables: ``{'params': ..., ...}`` of a Flax model (dict or FrozenDict).
    factors: ``(L,)``, one factor per entry of ``bn_paths`` (1 = unchanged).
    bn_paths: module paths under ``variables['params']``.

  Returns:
    New variables; every other leaf is the same object as in ``variables``.
  """
  chex.assert_shape(factors, (len(bn_paths),))
  params = variables['params']
  for i, path in enumerate(bn_paths):
    def scale_leaves(node, f=factors[i]):
      node = dict(node)
      for leaf in BN_LEAVES:
        if leaf in node:
          node[leaf] = node[leaf] * f.astype(node[leaf].dtype)
      return node
    params = _replace(params, tuple(path), scale_leaves)
  out = dict(variables)
  out['params'] = params
  return out


def factor_matrix(counts: Sequence[int], num_layers: int, omega: float) -> np.ndarray:
  """``(len(counts), L)``: row ``i`` is ``omega`` on the last ``counts[i]`` layers, else 1."""
  m = np.ones((len(counts), num_layers), np.float32)
  for i, c in enumerate(counts):
    if not 0 <= c <= num_layers:
      raise InputError(f'cannot amplify the last {c} of {num_layers} BN layers')
    if c:
      m[i, num_layers - c:] = omega
  return m


def psc_scores(apply_fn: Callable, variables, images, factors, bn_paths: Sequence[Path]):
  """IBD-PSC on one batch.

  Args:
    apply_fn: ``(variables, images) -> logits``.
    variables: the model's variables.
    images: ``(B, H, W, C)`` in [0, 1].
    factors: ``(n, L)`` per-layer amplification factors of the n models
      (from :func:`factor_matrix`).
    bn_paths: the ``L`` BN module paths (static).

  Returns:
    ``(preds, psc)``: int32 ``(B,)`` and float32 ``(B,)``, the mean softmax
    probability of the original prediction under the ``n`` amplified models.
  """
  chex.assert_rank(images, 4)
  chex.assert_rank(factors, 2)
  preds = common.predict_labels(apply_fn, variables, images)

  def confidence(f):  # (L,) -> (B,)
    probs = jax.nn.softmax(apply_fn(amplify_bn(variables, f, bn_paths), images), axis=-1)
    return jnp.take_along_axis(probs, preds[:, None], axis=1)[:, 0]

  conf = jax.vmap(confidence)(factors)  # (n, B)
  return preds, jnp.mean(conf, axis=0).astype(jnp.float32)


def select_start(apply_fn: Callable, variables, images, labels, bn_paths: Sequence[Path],
                 omega: float = DEFAULT_OMEGA, xi: float = DEFAULT_XI,
                 batch_size: int = 256) -> tuple[int | None, list[float]]:
  """The paper's adaptive layer choice: the first ``k`` whose error exceeds ``xi``.

  Args:
    apply_fn, variables: the model.
    images: ``(M, H, W, C)`` benign images.
    labels: ``(M,)`` their labels (or the unamplified model's predictions).
    bn_paths: the ``L`` BN paths in forward order.
    omega: amplification factor.
    xi: error-rate threshold.
    batch_size: images per compiled call.

  Returns:
    ``(k, errors)``: ``k`` in ``1..L-1`` (None if no ``k`` exceeds ``xi``) and
    the error rates measured for ``k = 1, 2, ...`` up to the stop.
  """
  num_layers = len(bn_paths)
  labels = np.asarray(labels)
  bs = min(batch_size, len(images))

  @jax.jit
  def amplified_preds(v, f, x):
    return common.predict_labels(apply_fn, amplify_bn(v, f, bn_paths), x)

  errors = []
  for k in range(1, num_layers):
    f = jnp.asarray(factor_matrix([k], num_layers, omega)[0])
    preds = map_batches(lambda x: amplified_preds(variables, f, x), images, bs)
    errors.append(float(np.mean(preds != labels)))
    if errors[-1] > xi:
      return k, errors
  return None, errors


def make(apply_fn: Callable, variables=None, *, key=None, benign_images=None, benign_labels=None,
         omega: float = DEFAULT_OMEGA, n: int = DEFAULT_N, xi: float = DEFAULT_XI,
         start: int | None = None, bn_paths: Sequence[Path] | None = None,
         batch_size: int = 256) -> common.Detector:
  """Builds an IBD-PSC :class:`~scaleup_jax.baselines.common.Detector`.

  Args:
    apply_fn: ``(variables, images) -> logits`` of a Flax model with BatchNorm.
    variables: the trained variables (required: the layer choice runs on them).
    key: unused (deterministic); accepted for a uniform interface.
    benign_images: ``(M, H, W, C)`` defender images, for the layer choice
      (required unless ``start`` is given).
    benign_labels: ``(M,)`` their labels; None: use the model's predictions.
    omega: amplification factor (default 1.5).
    n: number of amplified models (default 5).
    xi: error-rate threshold of the layer choice (default 0.6).
    start: skip the layer choice and use this ``k*``.
    bn_paths: BN module paths in forward order (default: discovered with
      :func:`bn_layer_paths`).
    batch_size: batch size of the layer-choice pass.

  Returns:
    A detector with ``needs='parameters'`` and ``1 + n`` forwards per image;
    ``config`` holds the BN order, ``k*`` and the measured error rates.
  """
  del key
  if variables is None:
    raise InputError('IBD-PSC is white-box: pass the trained variables to build it')
  n = common.check_positive_int('n', n)
  if not omega > 0:
    raise InputError(f'omega must be > 0; got {omega}')
  pool = None
  if benign_images is not None or start is None:
    pool = common.check_benign('IBD-PSC', benign_images)
  if bn_paths is None:
    shape = pool.shape[1:] if pool is not None else None
    if shape is None:
      raise InputError('IBD-PSC needs bn_paths or benign_images to find the BatchNorm layers')
    bn_paths = bn_layer_paths(apply_fn, variables, shape)
  bn_paths = [tuple(p) for p in bn_paths]
  num_layers = len(bn_paths)
  if num_layers < 2:
    raise InputError(f'IBD-PSC needs a model with at least 2 BatchNorm layers; found {num_layers} '
                     f'({bn_paths}); for a non-Flax model pass bn_paths explicitly')
  for p in bn_paths:
    node = _get(variables['params'], p)
    if not any(leaf in node for leaf in BN_LEAVES):
      raise InputError(f'BN layer {p} has neither scale nor bias; got leaves {sorted(node)}')

  errors: list[float] = []
  found = True
  if start is None:
    if benign_labels is None:
      predict = jax.jit(lambda v, x: common.predict_labels(apply_fn, v, x))
      labels = map_batches(lambda x: predict(variables, x), pool, min(batch_size, len(pool)))
    else:
      labels = np.asarray(benign_labels)
      if labels.shape != (len(pool),):
        raise InputError(f'benign_labels must have shape ({len(pool)},); got {labels.shape}')
    start, errors = select_start(apply_fn, variables, pool, labels, bn_paths, omega, xi, batch_size)
    if start is None:
      found = False
      start = max(num_layers - n, 0)
      warnings.warn(f'IBD-PSC: no amplification of up to {num_layers - 1} BN layers reached '
                    f'error {xi} on the benign set (errors {np.round(errors, 3).tolist()}); '
                    f'using k* = {start}')
  elif not 0 <= start < num_layers:
    raise InputError(f'start must lie in [0, {num_layers}); got {start}')
  counts = [min(start + i, num_layers) for i in range(1, n + 1)]
  factors = jnp.asarray(factor_matrix(counts, num_layers, omega))
  paths = tuple(bn_paths)
  core = jax.jit(lambda v, x, k, aux: psc_scores(apply_fn, v, x, aux, paths))
  return common.Detector(
      name='ibd_psc', core=core, aux=factors, key=jax.random.key(0), needs='parameters',
      model_forwards=1 + n,
      config={'omega': omega, 'n': n, 'xi': xi, 'threshold_T': DEFAULT_T, 'start_k': int(start),
              'start_found': found, 'amplified_layer_counts': counts,
              'bn_layers_forward_order': ['/'.join(p) for p in paths],
              'layer_choice_errors': errors, 'labels': 'given' if benign_labels is not None else
              'model predictions'})
