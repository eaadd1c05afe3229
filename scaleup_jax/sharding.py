"""SCALE-UP on several devices: the batch axis split over a device mesh.

SCALE-UP scores every image independently, so data parallelism needs no
communication: each device runs the detector on its slice of the batch with a
replicated copy of the variables. :func:`make_sharded_detector` builds that as
one compiled program (``shard_map`` over a 1-d :class:`jax.sharding.Mesh`,
inputs and outputs laid out with :class:`jax.sharding.NamedSharding`).

Single host, all local devices (GPUs, or CPU devices forced with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``)::

  detect = make_sharded_detector(partial(model.apply, train=False))
  variables = replicate(variables, detect.mesh)          # once
  preds, spc = detect(variables, images)                 # batch % devices == 0

Several hosts: call ``jax.distributed.initialize()`` in every process, build
the mesh over all devices with :func:`global_mesh`, and let every process feed
its own slice of the global batch with :func:`global_batch`; read the results
back with :func:`local_part` (see ``docs/performance.md``).

References:
  Guo et al. "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection
  via Analyzing Scaled Prediction Consistency". ICLR 2023.
  https://arxiv.org/abs/2302.03251
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scaleup_jax.batching import pad_to
from scaleup_jax.scaleup import DEFAULT_SCALES, resolve_method, scaleup_detect
from scaleup_jax.validation import InputError, check_scales

AXIS = 'batch'


def local_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = AXIS) -> Mesh:
  """A 1-d mesh over ``devices`` (default: this process's local devices)."""
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise InputError('cannot build a mesh over an empty device list')
  return Mesh(np.array(devices), (axis_name,))


def global_mesh(axis_name: str = AXIS) -> Mesh:
  """A 1-d mesh over every device of every process (after ``jax.distributed.initialize()``)."""
  return Mesh(np.array(jax.devices()), (axis_name,))


def replicate(variables, mesh: Mesh):
  """Places a copy of ``variables`` (any pytree) on every device of ``mesh``.

  On a multi-host mesh every process must pass the same values (e.g. load the
  same checkpoint); each one fills its own devices.
  """
  sharding = NamedSharding(mesh, P())
  if sharding.is_fully_addressable:
    return jax.device_put(variables, sharding)
  return jax.tree_util.tree_map(
      lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a), np.shape(a)),
      variables)


def shard_batch(images, mesh: Mesh, axis_name: str = AXIS):
  """Splits axis 0 of ``images`` over ``mesh`` (one contiguous slice per device).

  Args:
    images: ``(B, H, W, C)`` host or device array, ``B`` divisible by the
      number of devices along ``axis_name``.

  Returns:
    A ``jax.Array`` of the same shape, sharded along the batch axis.
  """
  _check_divisible(images.shape[0], mesh, axis_name)
  return jax.device_put(images, NamedSharding(mesh, P(axis_name)))


def global_batch(local_images, mesh: Mesh, axis_name: str = AXIS):
  """Assembles the global batch from each process's own images (multi-host).

  Every process passes its ``(b, H, W, C)`` slice (the same ``b`` everywhere);
  the result is a global ``(b * num_processes, H, W, C)`` array sharded over
  ``mesh``, without any process holding the others' images. In a single
  process this is :func:`shard_batch`.
  """
  return jax.make_array_from_process_local_data(
      NamedSharding(mesh, P(axis_name)), np.asarray(local_images))


def local_part(array) -> np.ndarray:
  """The rows of a batch-sharded result that live on this process, as numpy.

  Rows come in global order; in a single process this is all of ``array``.
  """
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, parts = set(), []
  for s in shards:  # with replication along other axes a slice may appear twice
    key = (s.index[0].start, s.index[0].stop)
    if key not in seen:
      seen.add(key)
      parts.append(np.asarray(s.data))
  return np.concatenate(parts, axis=0)


def pad_batch(images, multiple: int):
  """Pads axis 0 of host ``images`` to a multiple of ``multiple`` (repeating the last row).

  Returns:
    ``(padded, n)``: the padded array and the number of real rows, so that
    ``preds[:n]`` drops the padding again.
  """
  n = len(images)
  target = -(-n // multiple) * multiple
  return pad_to(np.asarray(images), target), n


def _check_divisible(batch: int, mesh: Mesh, axis_name: str) -> None:
  n = mesh.shape[axis_name]
  if batch % n:
    raise InputError(
        f'a batch of {batch} images cannot be split evenly over {n} devices '
        f'(mesh axis {axis_name!r}); pad it to {-(-batch // n) * n} with pad_batch, '
        f'or use detect_batched with a batch_size divisible by {n}')


def make_sharded_detector(apply_fn: Callable, scales: Sequence[float] = DEFAULT_SCALES,
                          method: str = 'vmap', mesh: Mesh | None = None,
                          axis_name: str = AXIS) -> Callable:
  """:func:`~scaleup_jax.scaleup.make_detector` with the batch split over devices.

  Args:
    apply_fn: ``(variables, images (b, H, W, C)) -> logits (b, K)``.
    scales: ``(S,)`` amplification factors, each >= 1.
    method: ``'vmap'`` or ``'map'``, as in :func:`~scaleup_jax.scaleup.scaleup_labels`
      (applied on every device to its slice).
    mesh: a mesh with axis ``axis_name``; default :func:`local_mesh`.
    axis_name: the mesh axis the batch is split over.

  Returns:
    ``detect(variables, images) -> (preds, spc)``, jitted once per input
    shape. ``images`` is ``(B, H, W, C)`` in [0, 1] with ``B`` divisible by
    the number of devices (else an ``InputError`` names both numbers);
    ``preds`` (int32) and ``spc`` (float32) are ``(B,)`` arrays sharded like
    the images, equal to the single-device detector's. Variables are
    replicated (pass them through :func:`replicate` once to avoid a copy per
    call); ``detect.mesh`` is the mesh used.

  Example:
    >>> detect = make_sharded_detector(partial(model.apply, train=False))
    >>> preds, spc = detect(replicate(variables, detect.mesh), images)
  """
  scales = tuple(float(s) for s in check_scales(scales))
  resolve_method(method, 1)  # an unknown method fails here
  mesh = local_mesh(axis_name=axis_name) if mesh is None else mesh
  if axis_name not in mesh.shape:
    raise InputError(f'mesh has axes {tuple(mesh.shape)}; expected an axis {axis_name!r}')

  def per_device(variables, images):
    return scaleup_detect(apply_fn, variables, images, scales, method)

  batch = NamedSharding(mesh, P(axis_name))
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(axis_name)),
                          out_specs=(P(axis_name), P(axis_name)))
  jitted = jax.jit(sharded, in_shardings=(NamedSharding(mesh, P()), batch),
                   out_shardings=(batch, batch))

  def detect(variables, images):
    if getattr(images, 'ndim', None) != 4:
      raise InputError(f'images must have shape (B, H, W, C); got {getattr(images, "shape", None)}')
    _check_divisible(images.shape[0], mesh, axis_name)
    return jitted(variables, images)

  detect.mesh = mesh
  detect.jitted = jitted
  return detect
