"""Shared fixtures. Tests never download: CIFAR-10 comes from $TFDS_DATA_DIR
(CI sets it to ../shared/tensorflow_datasets; locally we fall back to that path)."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_shared = ROOT.parent / 'shared' / 'tensorflow_datasets'
if not os.environ.get('TFDS_DATA_DIR') and _shared.is_dir():
  os.environ['TFDS_DATA_DIR'] = str(_shared)

# Tests never download: the tests of the download path serve a fake archive on 127.0.0.1.
os.environ['SCALEUP_JAX_NO_DOWNLOAD'] = '1'

from scaleup_jax.xla_flags import set_default_xla_flags  # noqa: E402

set_default_xla_flags()


def _have_cifar() -> bool:
  d = os.environ.get('TFDS_DATA_DIR')
  return bool(d) and any((Path(d) / 'cifar10').glob('*/dataset_info.json'))


requires_cifar = pytest.mark.skipif(
    not _have_cifar(), reason='CIFAR-10 not prepared under $TFDS_DATA_DIR (tests never download)')


@pytest.fixture(scope='session')
def cifar_test_small():
  from scaleup_jax.data import load_split
  return load_split('cifar10', 'test', max_examples=256)


@pytest.fixture(scope='session')
def tiny_model():
  """A randomly initialised tiny ResNet and its variables."""
  import jax
  import jax.numpy as jnp
  from scaleup_jax.models import TinyResNet
  model = TinyResNet(num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  return model, variables
