"""Sharded SCALE-UP equals the single-device detector (2 forced CPU devices).

The device count is fixed when JAX starts, so the check runs in a subprocess
with ``--xla_force_host_platform_device_count=2`` in ``XLA_FLAGS``.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import functools
    import jax, jax.numpy as jnp, numpy as np
    from scaleup_jax import scaleup, sharding
    from scaleup_jax.models import TinyResNet
    from scaleup_jax.validation import InputError

    assert jax.device_count() == 2, jax.devices()
    model = TinyResNet(num_classes=10)
    rng = np.random.default_rng(0)
    # Half full-range, half darkened images: SPC takes several values.
    brightness = np.where(np.arange(16) < 8, 1.0, rng.uniform(0.02, 0.6, 16))
    images = (rng.uniform(0, 1, (16, 32, 32, 3)) * brightness[:, None, None, None]).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(1), images[:1])
    # Residual branches on (random BatchNorm scales) and non-trivial statistics.
    draw = {'scale': lambda a: rng.uniform(0.5, 1.5, a.shape),
            'mean': lambda a: rng.normal(0.0, 0.05, a.shape),
            'var': lambda a: rng.uniform(0.5, 2.0, a.shape)}
    variables = jax.tree_util.tree_map_with_path(
        lambda p, a: draw[p[-1].key](a).astype(np.float32) if p[-1].key in draw else a, variables)
    apply_fn = functools.partial(model.apply, train=False)
    scales = (3.0, 5.0, 7.0, 9.0, 11.0)
    for method in scaleup.METHODS:
      single = scaleup.make_detector(apply_fn, scales, method)
      detect = sharding.make_sharded_detector(apply_fn, scales, method)
      assert detect.mesh.devices.size == 2
      want = [np.asarray(a) for a in single(variables, images)]
      # numpy in, uncommitted arrays in, pre-placed arrays in: same results.
      for v, x in [(variables, images),
                   (sharding.replicate(variables, detect.mesh),
                    sharding.shard_batch(images, detect.mesh)),
                   (variables, sharding.global_batch(images, detect.mesh))]:
        preds, spc = detect(v, x)
        assert len(preds.sharding.device_set) == 2, preds.sharding
        assert preds.addressable_shards[0].data.shape == (8,)
        np.testing.assert_array_equal(np.asarray(preds), want[0])
        np.testing.assert_array_equal(np.asarray(spc), want[1])
        np.testing.assert_array_equal(sharding.local_part(spc), want[1])
    assert len(np.unique(want[1])) >= 2, want[1]
    # Odd batch: a clear error, and pad_batch fixes it.
    try:
      detect(variables, images[:7])
      raise SystemExit('odd batch was accepted')
    except InputError as e:
      assert '7 images' in str(e) and '2 devices' in str(e), e
    padded, n = sharding.pad_batch(images[:7], 2)
    preds, spc = detect(variables, padded)
    np.testing.assert_array_equal(np.asarray(spc)[:n], want[1][:7])
    print('SHARDING_OK')
''')


def test_sharded_detector_equals_single_device():
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  r = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0 and 'SHARDING_OK' in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def test_single_device_mesh_in_process():
  import functools

  import jax
  import numpy as np

  from scaleup_jax import scaleup, sharding
  from scaleup_jax.models import TinyResNet
  model = TinyResNet(num_classes=10)
  images = np.array(jax.random.uniform(jax.random.key(0), (4, 32, 32, 3)))
  variables = model.init(jax.random.key(1), images[:1])
  apply_fn = functools.partial(model.apply, train=False)
  mesh = sharding.local_mesh(jax.local_devices()[:1])
  preds, spc = sharding.make_sharded_detector(apply_fn, mesh=mesh)(variables, images)
  want = scaleup.make_detector(apply_fn)(variables, images)
  np.testing.assert_array_equal(np.asarray(preds), np.asarray(want[0]))
  np.testing.assert_array_equal(np.asarray(spc), np.asarray(want[1]))
  with pytest.raises(scaleup.InputError, match="axis 'batch'"):
    sharding.make_sharded_detector(apply_fn, mesh=jax.sharding.Mesh(np.array(jax.local_devices()[:1]), ('data',)))
