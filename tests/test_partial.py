"""Partial (source-label-specific) backdoors, paper App. K: config, training metrics, evaluation set."""

import json

import numpy as np
import pytest

from conftest import requires_cifar
from scaleup_jax import evaluate, train
from train.configs import multi_label_resnet20, partial_resnet20, v2


@pytest.mark.parametrize('target', [1, 5, 8])
def test_source_draw_is_seeded_and_avoids_target_and_saturation_class(target):
  a = partial_resnet20.source_draw(target)
  assert a == partial_resnet20.source_draw(target)
  assert len(set(a)) == partial_resnet20.NUM_SOURCES
  assert target not in a and not set(a) & set(v2.SATURATION_CLASSES)
  assert partial_resnet20.source_draw(target, seed=1) != a or partial_resnet20.source_draw(
      target, seed=2) != a


def test_partial_config_is_the_one_label_recipe_with_sources_and_cover():
  config, ref = partial_resnet20.get_config(), multi_label_resnet20.get_config('1')
  assert config.target_label == ref.target_label
  assert config.source_classes == partial_resnet20.source_draw(ref.target_label)
  assert config.cover_rate == partial_resnet20.COVER_RATE
  for field in ('poison_rate', 'num_epochs', 'augment', 'attack', 'seed'):
    assert config[field] == ref[field], field
  assert config.attack_kwargs.size == ref.attack_kwargs.size


@requires_cifar
def test_partial_run_end_to_end(tmp_path):
  config = partial_resnet20.get_config('quick')
  work = tmp_path / 'run'
  train.train_and_evaluate(config, str(work))
  metrics = json.loads((work / 'metrics.json').read_text())
  assert {'asr', 'asr_non_source'} <= set(metrics)
  assert metrics['poisoning']['cover']['num_images'] > 0
  ev = evaluate.prepare_eval_set(evaluate.DetectOptions(
      ckpt=str(work), num_images=100, num_defense_per_class=2, batch_size=50, plot=False,
      progress=False))
  # The positives are the triggered evaluation images of the source classes, all of them.
  assert ev.num_poisoned == np.isin(ev.benign.labels, config.source_classes).sum() > 0
