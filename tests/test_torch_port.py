"""PyTorch port: converted logits match Flax; PyTorch SCALE-UP matches the JAX detector."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip('torch')

from scaleup_jax import scaleup, torch_port  # noqa: E402
from scaleup_jax.models import ResNet, ResNet20, TinyResNet  # noqa: E402
from scaleup_jax.validation import InputError  # noqa: E402

SCALES = scaleup.DEFAULT_SCALES


def _nontrivial_variables(model, image_shape=(32, 32, 3), seed=0):
  """Variables in which every converted array matters.

  Random init leaves every block's second BatchNorm scale at zero (residual
  branches off) and the running statistics at (0, 1), which would hide
  conversion mistakes; draw scales, biases and running statistics at random
  instead (small enough that the logits stay O(1)).
  """
  variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, *image_shape)))
  rng = np.random.default_rng(seed)
  draw = {
      'scale': lambda a: rng.uniform(0.5, 1.5, a.shape),
      'bias': lambda a: rng.normal(0.0, 0.02, a.shape),
      'mean': lambda a: rng.normal(0.0, 0.05, a.shape),
      'var': lambda a: rng.uniform(0.5, 2.0, a.shape),
  }
  out = {}
  for col in ('params', 'batch_stats'):
    flat = traverse_util.flatten_dict(variables[col])
    out[col] = traverse_util.unflatten_dict({
        path: jnp.asarray(draw[path[-1]](a) if path[-1] in draw else a, jnp.float32)
        for path, a in flat.items()})
  return out


def _images(n, seed=1):
  """Images in [0, 1]: half uniform, half darkened, so that SPC takes several values."""
  rng = np.random.default_rng(seed)
  brightness = np.where(np.arange(n) < n // 2, 1.0, rng.uniform(0.02, 0.6, n))
  return (rng.uniform(0.0, 1.0, (n, 32, 32, 3)) * brightness[:, None, None, None]).astype(np.float32)


@pytest.fixture(scope='module', params=['tiny', 'resnet20'])
def case(request):
  """The model, its variables, the converted net, images, and the JAX side's outputs.

  Everything on the JAX side is jitted and computed once per model (this
  module must stay fast on a loaded CPU).
  """
  model = {'tiny': TinyResNet, 'resnet20': ResNet20}[request.param](num_classes=10)
  variables = _nontrivial_variables(model)
  images = _images(32)
  apply = jax.jit(model.apply)
  detect = scaleup.make_detector(functools.partial(model.apply, train=False), SCALES)
  preds, spc = (np.asarray(a) for a in detect(variables, images))
  # Images whose top-2 logit gap at some scale is within round-off: argmax may
  # legitimately differ between frameworks there.
  ambiguous = np.zeros(len(images), bool)
  for n in (1.0,) + SCALES:
    top2 = np.sort(np.asarray(apply(variables, np.clip(n * images, 0.0, 1.0))), axis=1)[:, -2:]
    ambiguous |= top2[:, 1] - top2[:, 0] < 1e-4
  return types.SimpleNamespace(
      name=request.param, model=model, variables=variables, images=images,
      net=torch_port.flax_to_torch(model, variables), logits=np.asarray(apply(variables, images)),
      preds=preds, spc=spc, ok=~ambiguous)


def test_variables_are_non_trivial(case):
  stats = traverse_util.flatten_dict(case.variables['batch_stats'])
  assert all(float(jnp.abs(a - (k[-1] == 'var')).max()) > 0.01 for k, a in stats.items())


def test_logits_match_flax(case):
  with torch.inference_mode():
    got = case.net(torch.from_numpy(case.images)).numpy()
  assert not case.net.training
  assert np.abs(case.logits).max() > 0.1  # not a degenerate all-zero output
  np.testing.assert_allclose(got, case.logits, rtol=0, atol=1e-4)


def test_nchw_layout_matches(case):
  net = torch_port.flax_to_torch(case.model, case.variables, input_layout='NCHW')
  with torch.inference_mode():
    got = net(torch.from_numpy(case.images.transpose(0, 3, 1, 2).copy())).numpy()
  np.testing.assert_allclose(got, case.logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize('reference', ['loop', 'batched'])
def test_torch_references_match_jax_detector(case, reference):
  fn = {'loop': torch_port.torch_scaleup_loop, 'batched': torch_port.torch_scaleup_batched}[reference]
  t_preds, t_spc = fn(case.net, torch.from_numpy(case.images), SCALES)
  assert t_preds.shape == t_spc.shape == (len(case.images),) and t_spc.dtype == torch.float32
  ok = case.ok
  assert ok.mean() > 0.9
  if case.name == 'tiny':
    # (A random-init ResNet-20 predicts one class whatever the input: SPC = 1.)
    assert len(np.unique(case.spc[ok])) >= 3, f'want varied SPC; got {np.unique(case.spc)}'
  np.testing.assert_array_equal(t_preds.numpy()[ok], case.preds[ok])
  np.testing.assert_array_equal(t_spc.numpy()[ok], case.spc[ok])


def test_odd_image_size_padding_matches():
  # 'SAME' with stride 2 pads asymmetrically; check an odd size too.
  model = ResNet(stage_sizes=(1, 1, 1), num_filters=4, num_classes=3)
  x = np.random.default_rng(2).uniform(0.0, 1.0, (3, 15, 15, 3)).astype(np.float32)
  variables = _nontrivial_variables(model, x.shape[1:])
  net = torch_port.flax_to_torch(model, variables)
  with torch.inference_mode():
    got = net(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(got, np.asarray(jax.jit(model.apply)(variables, x)), rtol=0, atol=1e-4)


def test_mismatched_variables_fail_loudly(case):
  model, variables = case.model, case.variables
  other = ResNet(stage_sizes=(1, 1), num_filters=8, num_classes=10)
  with pytest.raises(InputError, match='shape'):
    torch_port.flax_to_torch(other, variables)
  with pytest.raises(InputError, match='batch_stats'):
    torch_port.flax_to_torch(model, {'params': variables['params']})
