"""The detector registry: SCALE-UP through its own entry, modes, fit/score, options."""

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from scaleup_jax import detectors, evaluate, scaleup
from scaleup_jax.validation import InputError


def _toy_apply(variables, x):
  """Logits whose argmax is the decile of the mean pixel times ``variables['w']``."""
  m = jnp.clip(jnp.floor(x.mean(axis=(1, 2, 3)) * 10 * variables['w']), 0, 9).astype(jnp.int32)
  return jax.nn.one_hot(m, 10)


VARS = {'w': jnp.float32(1.0)}


def _images(n=40, seed=0):
  x = jax.random.uniform(jax.random.key(seed), (n, 4, 4, 3))
  return np.asarray(x * jnp.linspace(0.02, 0.6, n)[:, None, None, None])


@pytest.mark.parametrize('dense', [(), (2.0, 4.0, 13.0)])
def test_scaleup_entry_reads_the_paper_scores_from_its_label_matrix(dense):
  x = _images()
  det = detectors.make('scaleup', _toy_apply, key=0, dense_scales=dense)
  assert det.score_modes == scaleup.CONSISTENCY_MODES == detectors.modes('scaleup')
  lm = np.asarray(det.raw(VARS, x))
  grid = scaleup.query_grid(scaleup.DEFAULT_SCALES, dense) if dense else scaleup.DEFAULT_SCALES
  assert det.config['grid'] == list(grid) and lm.shape == (len(x), 1 + len(grid))
  np.testing.assert_array_equal(
      lm, scaleup.scaleup_labels(lambda z: _toy_apply(VARS, z).argmax(-1), x, grid))
  preds, spc = scaleup.make_detector(_toy_apply)(VARS, x)
  assert len(np.unique(np.asarray(spc))) > 2  # not a trivial case
  p, scores = det.score(lm)  # no state: data-free only
  assert set(scores) == {'data-free'}
  np.testing.assert_array_equal(p, preds)
  np.testing.assert_allclose(scores['data-free'], spc)
  np.testing.assert_allclose(det(VARS, x)[1], spc)  # __call__ = head(raw)


def test_scaleup_fit_equals_the_class_statistics_of_the_defender_images():
  x, d = _images(40, 0), _images(30, 1)
  det = detectors.make('scaleup', _toy_apply, key=0, data_limited_form='scaled', group_by='true')
  labels = np.arange(30) % 10
  state = det.fit(det.raw(VARS, d), labels, 10)
  d_pred, d_spc = scaleup.make_detector(_toy_apply)(VARS, d)
  want = scaleup.fit_class_stats(np.asarray(d_spc), np.asarray(d_pred), 10, num_scales=5,
                                 labels=labels, group_by='true')
  np.testing.assert_allclose(state.mean, want.mean)
  np.testing.assert_allclose(state.std, want.std)
  preds, spc = scaleup.make_detector(_toy_apply)(VARS, x)
  _, scores = det.score(det.raw(VARS, x), state)
  np.testing.assert_allclose(scores['data-limited'],
                             scaleup.data_limited_scores(np.asarray(spc), np.asarray(preds),
                                                         want, 'scaled'))
  assert det.describe_state(state)['class_stats']['group_by'] == 'true'


def test_baseline_keeps_one_mode_named_after_it():
  det = detectors.make('shrinkpad', _toy_apply, key=0)
  assert det.score_modes == ('shrinkpad',) and det.fitted_modes == ()
  x = np.asarray(jax.random.uniform(jax.random.key(3), (8, 16, 16, 3)))
  preds, scores = det.score(det.raw(VARS, x))
  np.testing.assert_allclose(scores['shrinkpad'], det(VARS, x)[1])


@pytest.mark.parametrize('name, mode, want', [
    ('scaleup', 'both', scaleup.CONSISTENCY_MODES),
    ('scaleup', 'data-limited', ('data-limited', 'data-limited-global')),
    ('scaleup', 'data-free', ('data-free',)),
    ('strip', 'both', ('strip',)),
])
def test_select_modes(name, mode, want):
  assert detectors.select_modes(name, mode) == want


def test_select_modes_names_the_detector_modes():
  with pytest.raises(InputError, match=r"'strip' has no mode 'data-limited'; its modes: \['strip'\]"):
    detectors.select_modes('strip', 'data-limited')


def test_table_columns():
  assert detectors.table_columns('scaleup') == [
      ('SCALE-UP (data-free)', 'scaleup', 'data-free'),
      ('SCALE-UP (data-limited)', 'scaleup', 'data-limited')]
  assert detectors.table_columns('ibd-psc') == [('ibd_psc', 'ibd_psc', 'ibd_psc')]


@pytest.mark.parametrize('opts, match', [
    (dict(detector='strip', scales=(3.0, 5.0)), "'strip' has no option 'scales'"),
    (dict(detector_options={'num_overlays': 5}), r"'scaleup' has no option\(s\) \['num_overlays'\]"),
    (dict(scales=(3.0, 5.0), detector_options={'scales': (7.0,)}), 'scales given twice'),
    (dict(data_limited_form='halved'), "unknown data_limited_form 'halved'"),
])
def test_detector_options_are_validated_for_every_detector(opts, match):
  o = evaluate.DetectOptions(**opts)
  with pytest.raises(InputError, match=match):
    detectors.make(o.detector, _toy_apply, key=0, **evaluate.detector_options(o))


def test_scaleup_options_reach_the_detector():
  o = evaluate.DetectOptions(scales=(3.0, 7.0), dense_scales=(2.0,), group_by='true')
  det = detectors.make(o.detector, _toy_apply, key=0, **evaluate.detector_options(o))
  assert det.config['scales'] == [3.0, 7.0] and det.config['grid'] == [2.0, 3.0, 7.0]
  assert det.config['group_by'] == 'true' and det.model_forwards == 3


def _imports(path: Path) -> set:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {a.name.split('.')[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module.split('.')[0])
  return names


def test_the_library_imports_neither_train_nor_eval():
  offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & {'train', 'eval'})
               for p in (ROOT / 'scaleup_jax').rglob('*.py')}
  assert {k: v for k, v in offenders.items() if v} == {}
