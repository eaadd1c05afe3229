"""Flax ResNets for CIFAR-sized inputs (3x3 stem, no max-pool).

Every model takes images in pixel space, shape ``(B, H, W, C)`` with values in
``[0, 1]``, and normalises them internally with the dataset mean and std. That
way attacks (triggers) and defences (SCALE-UP's amplification) act on real
pixels, and the model is a black box from pixels to logits.

Presets:

* :data:`ResNet18`, :data:`ResNet34` -- the CIFAR variants used in the
  SCALE-UP paper (BasicBlock, widths 64-512).
* :data:`ResNet20` -- He et al.'s 3-stage CIFAR ResNet (0.27M parameters),
  the project's CPU-scale workhorse.
* :data:`TinyResNet` -- a few thousand parameters, for tests.
* :data:`VGG19BN` -- VGG-19 with batch norm, the paper's second architecture
  (App. M, Table 6); :data:`VGG11BNSmall` -- the VGG-11 layout at a quarter
  of the width, sized like ResNet-20 for CPU training.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from scaleup_jax.validation import InputError

# Channel statistics of the CIFAR-10 training set (pixel space [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

ModuleDef = Any


def normalise(x, mean, std, dtype):
  """``(x - mean) / std`` per channel, in ``dtype``: the models' input layer (pixels in [0, 1])."""
  return ((x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)).astype(dtype)


def batch_norm(train: bool, dtype) -> ModuleDef:
  """The models' batch norm: batch statistics when training, running averages otherwise."""
  return partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                 dtype=dtype)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (He et al. 2016)."""

  filters: int
  strides: int = 1
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(
          self.filters, (1, 1), (self.strides, self.strides), name='proj_conv'
      )(residual)
      residual = self.norm(name='proj_bn')(residual)
    return self.act(residual + y)


class ResNet(nn.Module):
  """CIFAR-style ResNet: 3x3 stem, stages of BasicBlocks, global pool, dense.

  Attributes:
    stage_sizes: number of blocks per stage.
    num_filters: width of the stem and of the first stage; each later stage
      doubles it.
    num_classes: number of output logits.
    mean, std: per-channel normalisation applied to the ``[0, 1]`` input.
    dtype: computation dtype (``jnp.bfloat16`` on accelerators if wanted).
  """

  stage_sizes: Sequence[int]
  num_filters: int = 64
  num_classes: int = 10
  mean: Sequence[float] = CIFAR10_MEAN
  std: Sequence[float] = CIFAR10_STD
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps pixels ``(B, H, W, C)`` in ``[0, 1]`` to logits ``(B, num_classes)``."""
    conv = partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = batch_norm(train, self.dtype)
    x = normalise(x, self.mean, self.std, self.dtype)
    x = conv(self.num_filters, (3, 3), name='stem_conv')(x)
    x = norm(name='stem_bn')(x)
    x = nn.relu(x)
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = BasicBlock(self.num_filters * 2**i, strides, conv=conv, norm=norm)(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)


class VGG(nn.Module):
  """VGG with batch norm (Simonyan & Zisserman 2015) for 32x32 inputs.

  Each entry of ``layers`` is a 3x3 convolution of that many filters followed
  by batch norm and ReLU, or ``'M'`` for 2x2 max-pooling; then global average
  pooling (1x1 after five poolings of a 32x32 image) and one dense layer, as in
  the CIFAR VGGs of BackdoorBox.

  Attributes:
    layers: the convolution widths and ``'M'`` pools, in order.
    num_classes: number of output logits.
    mean, std: per-channel normalisation applied to the ``[0, 1]`` input.
    dtype: computation dtype.
  """

  layers: Sequence[Any]
  num_classes: int = 10
  mean: Sequence[float] = CIFAR10_MEAN
  std: Sequence[float] = CIFAR10_STD
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps pixels ``(B, H, W, C)`` in ``[0, 1]`` to logits ``(B, num_classes)``."""
    norm = batch_norm(train, self.dtype)
    x = normalise(x, self.mean, self.std, self.dtype)
    for layer in self.layers:
      if layer == 'M':
        x = nn.max_pool(x, (2, 2), (2, 2))
        continue
      x = nn.Conv(int(layer), (3, 3), use_bias=False, dtype=self.dtype)(x)
      x = norm()(x)
      x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)


_VGG11 = (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M')
_VGG19 = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M',
          512, 512, 512, 512, 'M')

ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), num_filters=64)
ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3), num_filters=64)
ResNet20 = partial(ResNet, stage_sizes=(3, 3, 3), num_filters=16)
TinyResNet = partial(ResNet, stage_sizes=(1, 1), num_filters=4)
VGG19BN = partial(VGG, layers=_VGG19)
VGG11BNSmall = partial(VGG, layers=tuple(w if w == 'M' else w // 4 for w in _VGG11))

MODELS = {
    'resnet18': ResNet18,
    'resnet34': ResNet34,
    'resnet20': ResNet20,
    'tiny': TinyResNet,
    'vgg19_bn': VGG19BN,
    'vgg11_bn_small': VGG11BNSmall,
}


def get_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
  """Returns the preset ``name`` (one of :data:`MODELS`) for ``num_classes``."""
  if name not in MODELS:
    raise InputError(
        f'unknown model {name!r}; expected one of {sorted(MODELS)}'
    )
  return MODELS[name](num_classes=num_classes, **kwargs)
