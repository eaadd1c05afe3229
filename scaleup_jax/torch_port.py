"""PyTorch port of the Flax ResNets and PyTorch SCALE-UP references.

Used to check that the JAX detector computes what a PyTorch implementation
computes, and to compare their speed (``python -m eval.bench``).

* :func:`flax_to_torch` builds a ``torch.nn.Module`` with the architecture of a
  :class:`scaleup_jax.models.ResNet` and copies its Flax variables into it
  (conv kernels HWIO -> OIHW, dense kernels ``(in, out)`` -> ``(out, in)``,
  BatchNorm scale/bias/running mean/var). The module is returned in eval mode.
* :func:`torch_scaleup_loop` is SCALE-UP as the official implementation runs
  it: one forward pass per scale in a Python loop.
* :func:`torch_scaleup_batched` concatenates the unscaled images and every
  scaled copy into one batch of ``(1 + S) * B`` images and runs one forward.

Both references return the same ``(preds, spc)`` as
:func:`scaleup_jax.scaleup.make_detector` on the same images.

Layout: like the Flax model, the ported module takes pixels in ``[0, 1]`` and
normalises them itself. By default it takes ``(B, H, W, C)`` (NHWC) input, the
layout of the JAX side; ``input_layout='NCHW'`` makes it take PyTorch's
``(B, C, H, W)``. Internally it computes in NCHW.

PyTorch is optional: it is imported on first use, and an ``ImportError`` says
to ``pip install torch`` if it is absent.

References:
  Guo et al. "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection
  via Analyzing Scaled Prediction Consistency". ICLR 2023.
  https://arxiv.org/abs/2302.03251
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from scaleup_jax.models import CIFAR10_MEAN, CIFAR10_STD, ResNet
from scaleup_jax.scaleup import DEFAULT_SCALES
from scaleup_jax.validation import InputError, check_scales

LAYOUTS = ('NHWC', 'NCHW')


def require_torch():
  """Returns the ``torch`` module, or raises an ImportError saying how to get it."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        'PyTorch is needed for the PyTorch comparison (scaleup_jax.torch_port, '
        'python -m eval.bench) but is not installed: pip install torch') from e
  return torch


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(low, high) padding of XLA/Flax ``'SAME'`` along one spatial axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


@functools.lru_cache(maxsize=None)
def _modules() -> Any:
  """Defines the torch modules on first use (so that importing this file needs no torch)."""
  torch = require_torch()
  nn = torch.nn
  F = torch.nn.functional

  class SameConv2d(nn.Conv2d):
    """Bias-free conv with Flax's ``'SAME'`` padding.

    PyTorch pads symmetrically; XLA's ``'SAME'`` puts the odd pixel at the end
    (e.g. a 3x3, stride-2 conv on 32x32 pads 0 before and 1 after). Where the
    two agree (stride 1) the conv pads itself; elsewhere the input is padded.
    """

    def __init__(self, cin, cout, kernel, stride):
      super().__init__(cin, cout, kernel, stride=stride, padding=0, bias=False)

    def forward(self, x):
      k, s = self.kernel_size[0], self.stride[0]
      ph = _same_padding(x.shape[-2], k, s)
      pw = _same_padding(x.shape[-1], k, s)
      if ph[0] == ph[1] and pw[0] == pw[1]:
        return F.conv2d(x, self.weight, None, self.stride, (ph[0], pw[0]))
      x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
      return F.conv2d(x, self.weight, None, self.stride)

  def batch_norm(c):
    # Flax momentum 0.9 (weight of the old value) is PyTorch momentum 0.1.
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)

  class TorchBasicBlock(nn.Module):
    """:class:`scaleup_jax.models.BasicBlock` in PyTorch."""

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv0 = SameConv2d(cin, cout, 3, stride)
      self.bn0 = batch_norm(cout)
      self.conv1 = SameConv2d(cout, cout, 3, 1)
      self.bn1 = batch_norm(cout)
      # Flax adds the projection when the residual's shape differs from the
      # output's: a channel change or a stride that shrinks the image.
      self.has_proj = cin != cout or stride != 1
      if self.has_proj:
        self.proj_conv = SameConv2d(cin, cout, 1, stride)
        self.proj_bn = batch_norm(cout)

    def forward(self, x):
      y = F.relu(self.bn0(self.conv0(x)))
      y = self.bn1(self.conv1(y))
      residual = self.proj_bn(self.proj_conv(x)) if self.has_proj else x
      return F.relu(residual + y)

  class TorchResNet(nn.Module):
    """:class:`scaleup_jax.models.ResNet` in PyTorch (pixels in [0, 1] -> logits)."""

    def __init__(self, stage_sizes: Sequence[int], num_filters: int,
                 num_classes: int, mean: Sequence[float], std: Sequence[float],
                 in_channels: int = 3, input_layout: str = 'NHWC'):
      super().__init__()
      if input_layout not in LAYOUTS:
        raise InputError(f'input_layout must be one of {LAYOUTS}; got {input_layout!r}')
      self.input_layout = input_layout
      self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
      self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
      self.stem_conv = SameConv2d(in_channels, num_filters, 3, 1)
      self.stem_bn = batch_norm(num_filters)
      blocks = []
      cin = num_filters
      for i, num_blocks in enumerate(stage_sizes):
        for j in range(num_blocks):
          cout = num_filters * 2**i
          blocks.append(TorchBasicBlock(cin, cout, 2 if i > 0 and j == 0 else 1))
          cin = cout
      self.blocks = nn.Sequential(*blocks)
      self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
      """Maps pixels ``(B, H, W, C)`` (or ``(B, C, H, W)``) in [0, 1] to float32 logits ``(B, K)``."""
      if x.ndim != 4:
        raise InputError(f'expected a 4-d {self.input_layout} batch; got shape {tuple(x.shape)}')
      if self.input_layout == 'NHWC':
        x = x.permute(0, 3, 1, 2)
      x = ((x - self.mean) / self.std).to(self.stem_conv.weight.dtype)
      x = F.relu(self.stem_bn(self.stem_conv(x)))
      x = self.blocks(x)
      x = x.mean(dim=(2, 3))
      return self.head(x).float()

  return dict(torch=torch, TorchResNet=TorchResNet)


def torch_resnet(stage_sizes: Sequence[int], num_filters: int = 64, num_classes: int = 10,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                 in_channels: int = 3,
                 input_layout: str = 'NHWC'):
  """A randomly initialised PyTorch ResNet with the Flax model's architecture.

  Args mirror :class:`scaleup_jax.models.ResNet`; ``input_layout`` is ``'NHWC'``
  (default, as JAX) or ``'NCHW'``.

  Returns:
    A ``torch.nn.Module`` mapping pixels in [0, 1] to logits ``(B, num_classes)``.
  """
  return _modules()['TorchResNet'](tuple(stage_sizes), num_filters, num_classes,
                                   tuple(mean), tuple(std), in_channels, input_layout)


def _flatten(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if hasattr(v, 'items'):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def flax_to_torch(model, variables, input_layout: str = 'NHWC', dtype=None):
  """Converts a Flax :class:`~scaleup_jax.models.ResNet` and its variables to PyTorch.

  Args:
    model: the Flax module (e.g. ``ResNet20(num_classes=10)``); its
      ``stage_sizes``, ``num_filters``, ``num_classes``, ``mean`` and ``std``
      define the architecture.
    variables: ``{'params': ..., 'batch_stats': ...}`` from ``model.init`` or a
      checkpoint. Every array must be used exactly once, with the expected
      shape, or a ``ValueError`` names the offender.
    input_layout: ``'NHWC'`` (``(B, H, W, C)``, as the Flax model) or ``'NCHW'``.
    dtype: optional ``torch.dtype`` to cast the weights to (e.g.
      ``torch.bfloat16``); the input is cast after normalisation and the
      logits are returned as float32, as in Flax.

  Returns:
    A ``torch.nn.Module`` in eval mode (BatchNorm uses the running statistics)
    whose logits match ``model.apply(variables, x)`` to float32 round-off.

  Example:
    >>> net = flax_to_torch(model, variables)
    >>> logits = net(torch.from_numpy(images))   # images: (B, H, W, C) in [0, 1]
  """
  torch = require_torch()
  if not isinstance(model, ResNet):
    raise TypeError(f'flax_to_torch converts scaleup_jax.models.ResNet; got {type(model).__name__}')
  if 'params' not in variables or 'batch_stats' not in variables:
    raise InputError(
        f"variables must hold 'params' and 'batch_stats'; got keys {sorted(variables)}")
  params = {k: np.asarray(v, np.float32) for k, v in _flatten(variables['params']).items()}
  stats = {k: np.asarray(v, np.float32) for k, v in _flatten(variables['batch_stats']).items()}
  in_channels = params[('stem_conv', 'kernel')].shape[2] if ('stem_conv', 'kernel') in params else 3
  net = torch_resnet(model.stage_sizes, model.num_filters, model.num_classes, model.mean,
                     model.std, in_channels, input_layout)
  used_params, used_stats = set(), set()

  def take(store, used, key, shape, kind):
    if key not in store:
      raise InputError(f"Flax {kind} {'/'.join(key)} is missing; the variables do not fit "
                       f'{type(model).__name__}(stage_sizes={tuple(model.stage_sizes)}, '
                       f'num_filters={model.num_filters})')
    arr = store[key]
    if arr.shape != tuple(shape):
      raise InputError(f"Flax {kind} {'/'.join(key)} has shape {arr.shape}; expected {tuple(shape)}")
    used.add(key)
    return torch.from_numpy(arr.copy())

  def copy_conv(conv, path):
    o, i, kh, kw = conv.weight.shape
    k = take(params, used_params, path + ('kernel',), (kh, kw, i, o), 'param')
    conv.weight.data.copy_(k.permute(3, 2, 0, 1))  # HWIO -> OIHW

  def copy_bn(bn, path):
    c = (bn.num_features,)
    bn.weight.data.copy_(take(params, used_params, path + ('scale',), c, 'param'))
    bn.bias.data.copy_(take(params, used_params, path + ('bias',), c, 'param'))
    bn.running_mean.data.copy_(take(stats, used_stats, path + ('mean',), c, 'batch stat'))
    bn.running_var.data.copy_(take(stats, used_stats, path + ('var',), c, 'batch stat'))

  copy_conv(net.stem_conv, ('stem_conv',))
  copy_bn(net.stem_bn, ('stem_bn',))
  for b, block in enumerate(net.blocks):
    path = (f'BasicBlock_{b}',)
    copy_conv(block.conv0, path + ('Conv_0',))
    copy_bn(block.bn0, path + ('BatchNorm_0',))
    copy_conv(block.conv1, path + ('Conv_1',))
    copy_bn(block.bn1, path + ('BatchNorm_1',))
    if block.has_proj:
      copy_conv(block.proj_conv, path + ('proj_conv',))
      copy_bn(block.proj_bn, path + ('proj_bn',))
  out_f, in_f = net.head.weight.shape
  net.head.weight.data.copy_(take(params, used_params, ('head', 'kernel'), (in_f, out_f), 'param').T)
  net.head.bias.data.copy_(take(params, used_params, ('head', 'bias'), (out_f,), 'param'))

  unused = sorted('/'.join(k) for k in (set(params) - used_params) | (set(stats) - used_stats))
  if unused:
    raise InputError(f'Flax variables not used by the PyTorch port (architecture mismatch?): {unused}')
  if dtype is not None:
    net = net.to(dtype)
    net.mean.data = net.mean.data.float()
    net.std.data = net.std.data.float()
  return net.eval()


def _factors(scales):
  return [1.0] + [float(s) for s in check_scales(scales)]


def _spc(labels, preds):
  """SPC from ``(B, S)`` scaled labels and ``(B,)`` unscaled predictions."""
  return (labels == preds[:, None]).float().mean(dim=1)


def torch_scaleup_loop(net, images, scales=DEFAULT_SCALES):
  """SCALE-UP the way the official implementation runs it: one forward per scale.

  Args:
    net: a ``torch.nn.Module`` in eval mode mapping pixels in [0, 1] to logits,
      e.g. from :func:`flax_to_torch`.
    images: ``(B, H, W, C)`` float tensor in [0, 1] (or the layout ``net``
      takes), on ``net``'s device.
    scales: ``(S,)`` amplification factors, each >= 1.

  Returns:
    ``(preds, spc)``: int64 ``(B,)`` predictions on the unscaled images and
    float32 ``(B,)`` scaled prediction consistency, as torch tensors on the
    images' device.

  Example:
    >>> preds, spc = torch_scaleup_loop(net, torch.from_numpy(images))

  References:
    Guo et al. 2023, Eq. (1): https://arxiv.org/abs/2302.03251
  """
  torch = require_torch()
  factors = _factors(scales)
  with torch.inference_mode():
    preds = net(images).argmax(dim=1)
    labels = [net(torch.clamp(images * n, 0.0, 1.0)).argmax(dim=1) for n in factors[1:]]
    return preds, _spc(torch.stack(labels, dim=1), preds)


def torch_scaleup_batched(net, images, scales=DEFAULT_SCALES):
  """SCALE-UP with every scaled copy in one batch of ``(1 + S) * B`` images.

  The PyTorch counterpart of ``make_detector(..., method='vmap')``. Arguments
  and results as :func:`torch_scaleup_loop`.

  Example:
    >>> preds, spc = torch_scaleup_batched(net, torch.from_numpy(images))
  """
  torch = require_torch()
  factors = _factors(scales)
  b = images.shape[0]
  with torch.inference_mode():
    f = torch.tensor(factors, dtype=images.dtype, device=images.device)
    f = f.view(-1, *([1] * images.ndim))
    stacked = torch.clamp(images.unsqueeze(0) * f, 0.0, 1.0)  # (1 + S, B, ...)
    labels = net(stacked.reshape(-1, *images.shape[1:])).argmax(dim=1)
    labels = labels.view(len(factors), b).T  # (B, 1 + S)
    preds = labels[:, 0]
    return preds, _spc(labels[:, 1:], preds)


def torch_predict(net, images):
  """Plain inference: ``argmax(net(images))``, int64 ``(B,)`` (no autograd)."""
  torch = require_torch()
  with torch.inference_mode():
    return net(images).argmax(dim=1)


def num_forwards(scales=DEFAULT_SCALES) -> int:
  """Forward passes SCALE-UP makes per input: the unscaled one plus one per scale."""
  return 1 + len(check_scales(scales))


__all__ = [
    'require_torch', 'torch_resnet', 'flax_to_torch', 'torch_scaleup_loop',
    'torch_scaleup_batched', 'torch_predict', 'num_forwards', 'LAYOUTS',
]
