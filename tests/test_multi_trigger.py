"""Several triggers for one target label, paper App. G: config, trigger bookkeeping, experiment."""

import jax
import numpy as np
import pytest

from conftest import requires_cifar
from scaleup_jax import poison, reproduce, train
from scaleup_jax.reproduce import experiments
from scaleup_jax.validation import InputError
from train.configs import multi_label_resnet20, multi_trigger_resnet20


def test_one_trigger_is_the_one_label_recipe():
  config, ref = multi_trigger_resnet20.get_config('1'), multi_label_resnet20.get_config('1')
  del ref.infected_labels
  assert config.to_dict() == ref.to_dict()  # so zoo/sweeps/multi_label_k1 is the k = 1 point


@pytest.mark.parametrize('k', [2, 3, 4])
def test_k_triggers_each_get_the_per_trigger_rate(k):
  config = multi_trigger_resnet20.get_config(str(k))
  assert config.attack_kwargs.num_triggers == k
  assert config.poison_rate == pytest.approx(k * multi_trigger_resnet20.PER_TRIGGER_RATE)
  assert config.target_label == multi_label_resnet20.infection_order()[0]


@pytest.mark.parametrize('arg', ['', '0', '5', 'two', '2,3'])
def test_bad_trigger_counts_are_refused(arg):
  with pytest.raises(InputError, match='number of triggers, 1 to 4'):
    multi_trigger_resnet20.get_config(arg)


@pytest.mark.parametrize('k,n', [(1, 5), (2, 5), (3, 7)])
def test_trigger_of_each_image_is_the_one_multitrigger_stamps(k, n):
  keys = jax.random.split(jax.random.key(0), k)
  singles = [poison.badnets_trigger(keys[i], corner=poison.CORNERS[i], size=4) for i in range(k)]
  trigger = singles[0] if k == 1 else poison.MultiTrigger(tuple(singles))
  images = np.random.default_rng(0).uniform(size=(n, 32, 32, 3)).astype(np.float32)
  which = experiments.trigger_of_each_image(trigger, n)
  stamped = trigger.apply(images)
  for i in range(n):
    np.testing.assert_array_equal(stamped[i], singles[which[i]].apply(images[i:i + 1])[0])
  assert np.bincount(which).tolist() == [len(range(j, n, k)) for j in range(k)]


def test_evaluation_set_stamps_trigger_i_mod_k_on_its_poisoned_images():
  """The order experiments.multi_trigger relies on: build_eval_arrays poisons the
  non-target evaluation images in one call, so positive j carries trigger j % k."""
  from scaleup_jax import evaluate
  keys = jax.random.split(jax.random.key(1), 3)
  singles = [poison.badnets_trigger(keys[i], corner=poison.CORNERS[i], size=4) for i in range(3)]
  trigger = poison.MultiTrigger(tuple(singles))
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(60, 32, 32, 3)).astype(np.float32)
  labels = np.arange(60) % 3
  ev = evaluate.build_eval_arrays(jax.random.key(0), images, labels, 3, 0, trigger.apply,
                                  num_defense_per_class=5)
  which = experiments.trigger_of_each_image(trigger, ev.num_poisoned)
  assert ev.num_poisoned == 30 and set(which) == {0, 1, 2}
  for j, src in enumerate(ev.poisoned_source[: ev.num_poisoned]):
    np.testing.assert_allclose(ev.poisoned_images[j],
                               singles[which[j]].apply(images[src:src + 1])[0])


@requires_cifar
def test_multi_trigger_experiment_end_to_end(tmp_path):
  work = tmp_path / 'multi_trigger_k2'
  train.train_and_evaluate(multi_trigger_resnet20.get_config('2,quick'), str(work))
  out = reproduce.reproduce(reproduce.ReproduceOptions(
      quick=True, only=('multi_trigger',), multi_trigger_ckpts=(str(work),), out=str(tmp_path),
      progress=False, command='test'))
  (row,) = out['experiments']['multi_trigger']['rows']
  assert row['num_triggers'] == 2 and row['poison_rate'] == pytest.approx(0.06)
  n, hits = np.array(row['num_per_trigger']), np.array(row['num_positives_per_trigger'])
  assert len(n) == 2 and n.sum() > 0
  np.testing.assert_allclose(row['asr_per_trigger'], hits / n)
  # Against one benign set, the pooled AUROC is the positives-weighted mean of the triggers'.
  if hits.sum():
    for mode in ('data-free', 'data-limited'):
      per = np.nan_to_num(np.array(row['per_trigger'][mode]))
      assert row[mode] == pytest.approx(float(np.sum(hits * per) / hits.sum()))
  md = (tmp_path / 'multi_trigger.md').read_text()
  assert '| multi_trigger_k2 | 2 | 0.06 |' in md and 'App. G' in md
  assert (tmp_path / 'multi_trigger.png').is_file()


def test_multi_trigger_without_models_is_skipped(tmp_path):
  out = reproduce.reproduce(reproduce.ReproduceOptions(
      quick=True, only=('multi_trigger',), out=str(tmp_path), progress=False, command='test'))
  r = out['experiments']['multi_trigger']
  assert r['status'] == 'skipped' and '--multi_trigger_ckpts' in r['reason']
