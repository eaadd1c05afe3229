"""The pre-deployment diagnosis: hand-computed pieces, then the zoo's clean model."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, requires_cifar
from scaleup_jax import checkpoint, data, diagnose, evaluate
from scaleup_jax.validation import InputError


def test_sink_shares_by_hand():
  labels = np.array([[1, 0, 0], [2, 0, 0], [2, 2, 0], [0, 1, 0]])
  shares = diagnose.sink_shares(labels, 3)
  np.testing.assert_allclose(shares, [[0.25, 0.25, 0.5], [0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
  assert diagnose.sink_classes(shares) == [0]  # 100% at the largest scale, 4x its 25%


@pytest.mark.parametrize('last,first,expected', [
    ([0.9, 0.05, 0.05], [0.1, 0.45, 0.45], [0]),
    ([0.2, 0.4, 0.4], [0.3, 0.1, 0.6], [1]),     # class 2 is big unscaled too: no sink
    ([0.34, 0.33, 0.33], [0.34, 0.33, 0.33], []),  # nothing moves
])
def test_sink_classes_rule(last, first, expected):
  assert diagnose.sink_classes(np.array([first, last])) == expected


def test_per_class_spc_and_fpr_by_hand():
  # Unscaled label, then two scales. SPC: 1, 0.5, 0, 1.
  labels = np.array([[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 1, 1]])
  true = np.array([0, 0, 1, 1])
  s = diagnose.summarise_scale_set(labels, true, 2)
  assert s['by_true_class']['mean'] == [0.75, 0.5]
  assert s['by_true_class']['at_one'] == [0.5, 0.5]
  assert s['fpr_at_spc_one'] == 0.5
  assert s['fpr_by_threshold'] == {'0.00': 0.75, '0.50': 0.5, '1.00': 0.0}
  assert s['accuracy'] == 1.0


def test_recommendation_keeps_the_paper_set_unless_clearly_better():
  base = {'sinks': [0], 'scales': [3.0], 'fpr_at_spc_one': 0.10}
  near = {'sinks': [0], 'scales': [2.0, 3.0], 'fpr_at_spc_one': 0.09}
  far = {'sinks': [0], 'scales': [2.0], 'fpr_at_spc_one': 0.05}
  assert diagnose.recommend({'paper': base, 'near': near}, ['a'])['scale_set'] == 'paper'
  rec = diagnose.recommend({'paper': base, 'near': near, 'far': far}, ['a'])
  assert rec['scale_set'] == 'far' and rec['sink_names'] == ['a'] and rec['mode'] == 'data-free'


def test_bad_inputs_are_named():
  with pytest.raises(InputError, match='shape'):
    diagnose.sink_shares(np.zeros((0, 3), int), 3)
  f = lambda v, x: np.zeros((len(x), 10))
  with pytest.raises(InputError, match='true_labels'):
    diagnose.diagnose(f, {}, np.zeros((4, 32, 32, 3), np.float32), np.zeros(3, int), 10)


@requires_cifar
@pytest.mark.slow
def test_names_airplane_on_the_clean_zoo_model():
  run = checkpoint.load_run(ROOT / 'zoo' / 'cifar10_clean_resnet20')
  test = data.load_split('cifar10', 'test')
  idx, _ = evaluate.split_test_set(jax.random.key(0), test.labels, 10, 20, 0)
  names = data.class_names('cifar10', None, 10)
  d = diagnose.diagnose(run.apply_fn, run.variables, test.images[idx], test.labels[idx], 10,
                        names, scale_sets={'paper': (3, 5, 7, 9, 11)})
  assert d['recommendation']['sink_names'] == ['airplane']
  by = d['scale_sets']['paper']['by_true_class']['mean']
  assert by[0] > 0.6 and max(by[1:]) < 0.4  # measured on 1,000 images: 0.83 vs 0.07-0.22


@requires_cifar
@pytest.mark.slow
def test_diagnose_entry_point(tmp_path):
  r = subprocess.run([sys.executable, '-m', 'eval.diagnose', '--ckpt', 'zoo/cifar10_clean_resnet20',
                      '--num_per_class', '4', '--out', str(tmp_path), '--noprogress'],
                     cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'Recommendation:' in r.stdout
  d = json.loads((tmp_path / 'diagnose.json').read_text())
  assert d['num_images'] == 40 and (tmp_path / 'diagnose.png').stat().st_size > 10_000
