"""Model presets: shapes, parameter counts, normalisation inside the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaleup_jax import models
from scaleup_jax.validation import InputError


def n_params(model):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))


@pytest.mark.parametrize('name, low, high', [
    ('resnet20', 0.26e6, 0.28e6),   # He et al. 2016: 0.27M
    ('resnet18', 11.1e6, 11.2e6),   # CIFAR ResNet-18: 11.17M
    ('resnet34', 21.2e6, 21.4e6),   # 21.28M
    ('tiny', 1e3, 1e4),
    ('vgg19_bn', 20.0e6, 20.1e6),   # CIFAR VGG-19-BN (BackdoorBox): 20.04M
    ('vgg11_bn_small', 0.57e6, 0.59e6),
])
def test_parameter_counts(name, low, high):
  assert low <= n_params(models.get_model(name)) <= high


def test_forward_shape_and_eval_mode(tiny_model):
  model, variables = tiny_model
  logits = model.apply(variables, jnp.zeros((3, 32, 32, 3)))
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32


def test_normalisation_is_inside_the_model():
  model = models.TinyResNet(num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  shifted = models.TinyResNet(num_classes=10, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  a = model.apply(variables, x)
  b = shifted.apply(variables, (x - jnp.array(models.CIFAR10_MEAN)) / jnp.array(models.CIFAR10_STD))
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_unknown_model():
  with pytest.raises(InputError, match="unknown model 'resnet50'"):
    models.get_model('resnet50')


def test_vgg_batch_norm_trains_and_evaluates():
  model = models.get_model('vgg11_bn_small', num_classes=7)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
  logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert logits.shape == (4, 7)
  # Training mode moves the running statistics; evaluation reads them and changes nothing.
  before = jax.tree.leaves(variables['batch_stats'])
  after = jax.tree.leaves(updates['batch_stats'])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  assert model.apply(variables, x).shape == (4, 7)


@pytest.mark.parametrize('name', ['clean', 'badnets', 'wanet', 'issba'])
def test_vgg_configs_are_the_v2_recipes_on_the_small_vgg(name):
  from train.configs import clean_resnet20, v2, vgg_small
  config = vgg_small.get_config(name)
  ref = clean_resnet20.get_config() if name == 'clean' else v2.get_config(name)
  assert config.model == 'vgg11_bn_small' and ref.model == 'resnet20'
  ref.model = config.model
  assert config.to_dict() == ref.to_dict()  # same target, trigger, rate and schedule


def test_vgg_config_names_its_choices():
  from train.configs import vgg_small
  with pytest.raises(InputError, match='vgg_small config takes one of'):
    vgg_small.get_config('resnet')
