"""End-to-end: SCALE-UP on the committed zoo BadNets ResNet-20 over real CIFAR-10.

Bounded: about 1,100 evaluation images plus 500 defender images, 6 forwards each
(well under a minute on two CPU cores).
"""

import json

import pytest

from conftest import ROOT, requires_cifar
from scaleup_jax import evaluate

ZOO = ROOT / 'zoo'


@requires_cifar
@pytest.mark.slow
def test_zoo_badnets_auroc(tmp_path):
  opts = evaluate.DetectOptions(
      ckpt=str(ZOO / 'cifar10_badnets_resnet20'), num_images=600, num_defense_per_class=50,
      batch_size=256, out=str(tmp_path / 'detect.json'), plot=False, progress=False)
  res = evaluate.evaluate_detection(opts)
  assert res['num_benign'] == 600 and res['num_positives'] >= 500
  assert res['asr'] >= 0.97, res['asr']
  assert res['detection']['data-free']['auroc'] >= 0.90, res['detection']
  # Data-limited mode is reported, not asserted: with target class 0 its benign
  # images already have SPC ~ 1 (see docs/results/detect.md).
  assert 0.0 <= res['detection']['data-limited']['auroc'] <= 1.0
  saved = json.loads((tmp_path / 'detect.json').read_text())
  assert saved['detection'] == res['detection']


@pytest.mark.parametrize('name', ['cifar10_badnets_resnet20', 'cifar10_clean_resnet20'])
def test_zoo_entries_are_complete(name):
  d = ZOO / name
  metrics = json.loads((d / 'metrics.json').read_text())
  assert (d / 'config.json').is_file() and (d / 'checkpoints').is_dir()
  assert metrics['epochs'] >= 1 and 'command' in metrics and metrics['train_seconds'] > 0
  assert ('asr' in metrics) == (metrics['attack'] != 'none')
