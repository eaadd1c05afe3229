"""Benchmark smoke test (--quick: every section), its pieces, and the PyTorch-absent path."""

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from scaleup_jax import bench, scaleup, torch_port
from scaleup_jax.validation import InputError

ROOT = Path(__file__).resolve().parents[1]


def _have_torch() -> bool:
  try:
    torch_port.require_torch()
    return True
  except ImportError:
    return False


def test_quick_bench_writes_json_md_png(tmp_path):
  r = subprocess.run([sys.executable, '-m', 'eval.bench', '--quick', f'--out={tmp_path}',
                      '--noprogress', f'--repo={tmp_path}'], cwd=ROOT, capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((tmp_path / 'bench.json').read_text())
  assert {'config', 'environment', 'results', 'checks', 'notes', 'summary', 'screen', 'fig6',
          'train', 'section_seconds'} <= set(res)
  assert res['config']['models'] == ['tiny'] and res['config']['batch_sizes'] == [1, 8]
  env = res['environment']
  for key in ('jax_version', 'torch_version', 'cpu_model', 'cpu_simd', 'cpu_count', 'threads',
              'xla_flags'):
    assert key in env, key
  assert env['git_commit'] is None  # --repo is not a git checkout: recorded as None, no crash
  methods = {(b, m) for b in (1, 8) for m in ('jax_infer', 'jax_vmap', 'jax_map', 'jax_chunked')}
  if _have_torch():
    methods |= {(b, m) for b in (1, 8) for m in ('torch_infer', 'torch_loop', 'torch_batched')}
    methods |= {(8, 'torch_bf16')}  # extra_at tiny:8 only
    assert env['torch_threads'] == env['threads']
    assert {(s['model'], s['batch_size']) for s in res['summary']} == {('tiny', 1), ('tiny', 8)}
  else:
    assert 'pip install torch' in res['torch_missing']
  assert {(r['batch_size'], r['method']) for r in res['results']} == methods
  for row in res['results']:
    s = row['images_per_s']
    assert len(s['values']) == 2 and 0 < s['min'] <= s['median'] <= s['max'], row
    assert (row['compile_s'] is not None) == (row['framework'] == 'jax')
    assert (row['detect_over_floor'] is not None) == (row['kind'] == 'detect')
  for check in res['checks']:
    for name, agree in check['agreement_with_jax_vmap'].items():
      if name != 'torch_bf16':  # bfloat16 may disagree; it is reported, not required
        assert agree == {'preds_equal': 1.0, 'spc_equal': 1.0}, (check, name)
  sets = res['screen']['sets']
  assert [s['set'] for s in sets] == ['benign']  # random model: no trigger, no poisoned set
  assert sets[0]['decisions_equal'] == 1.0 and sets[0]['flags_equal_same_key'] == 1.0
  assert 1 <= sets[0]['forwards_per_image'] <= 6
  assert {(r['detector'], r['batch_size']) for r in res['fig6']['rows']} == {
      (d, 8) for d in ('inference', 'scaleup_chunked', 'scaleup_screen', 'shrinkpad')}
  assert {r['method'] for r in res['train']} == ({'jax_train', 'torch_train'} if _have_torch()
                                                  else {'jax_train'})
  md = (tmp_path / 'bench.md').read_text()
  for heading in ('| batch | method |', 'Sequential screen', "Fig. 6", 'Training throughput'):
    assert heading in md, heading
  for png in ('bench.png', 'fig6.png'):
    assert (tmp_path / png).stat().st_size > 1000


def test_chunked_detector_equals_map(tiny_model):
  model, variables = tiny_model
  apply_fn = partial(model.apply, train=False)
  images = np.random.default_rng(0).uniform(0, 0.4, (10, 32, 32, 3)).astype(np.float32)
  want = scaleup.make_detector(apply_fn, method='map')(variables, images)
  for chunk in (4, 16):  # padded sub-batches, and one chunk larger than the batch
    got = bench.make_chunked_detector(apply_fn, chunk=chunk)(variables, images)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
  with pytest.raises(InputError, match='chunk'):
    bench.make_chunked_detector(apply_fn, chunk=0)


def test_best_of_separates_exact_from_disagreeing_torch():
  def row(method, ips):
    return {'model': 'm', 'batch_size': 4, 'method': method, 'kind': 'detect',
            'images_per_s': {'median': ips}}
  results = [row('jax_map', 100.0), row('jax_chunked', 120.0), row('torch_loop', 110.0),
             row('torch_bf16', 300.0), row('torch_compile', 150.0)]
  checks = [{'model': 'm', 'batch_size': 4, 'agreement_with_jax_vmap': {
      'torch_loop': {'preds_equal': 1.0, 'spc_equal': 1.0},
      'torch_compile': {'preds_equal': 1.0, 'spc_equal': 1.0},
      'torch_bf16': {'preds_equal': 0.9, 'spc_equal': 0.7}}}]
  (s,) = bench.best_of(results, checks)
  assert s['jax_best'] == 'jax_chunked' and s['torch_best'] == 'torch_bf16'
  assert s['torch_best_exact'] == 'torch_compile'
  assert s['jax_over_torch_loop'] == pytest.approx(120 / 110)
  assert s['jax_over_torch_best_exact'] == pytest.approx(120 / 150)


@pytest.mark.skipif(not _have_torch(), reason='PyTorch not installed')
def test_unavailable_torch_compile_becomes_a_note(monkeypatch, tiny_model):
  torch = torch_port.require_torch()
  model, variables = tiny_model
  net = torch_port.flax_to_torch(model, variables)
  x = torch.zeros((2, 32, 32, 3))

  def broken(*a, **k):
    raise RuntimeError('no C++ compiler\nmore detail')

  monkeypatch.setattr(torch, 'compile', broken)
  cases, notes = bench._torch_extra_cases(  # pylint: disable=protected-access
      torch, torch_port, net, x, scaleup.DEFAULT_SCALES, 'cpu', ('compile', 'bf16'), {})
  assert [c.method for c in cases] == ['torch_bf16']
  assert notes == ['torch_compile unavailable: RuntimeError: no C++ compiler']


def test_fig6_times_each_detector_with_its_own_key_and_aux(tiny_model):
  # Two detectors with different fitted state (STRIP's overlays, ShrinkPad's none): each
  # compiled call must get its own detector's aux, not the last one built.
  model, variables = tiny_model
  opts = bench.BenchOptions(models=('tiny',), fig6_detectors=('strip', 'shrinkpad'),
                            fig6_batches=(4,), repeats=1, min_seconds=0.01).resolved()
  images = np.random.default_rng(0).uniform(0, 1, (32, 32, 32, 3)).astype(np.float32)
  setup = {'source': 'tiny', 'apply_fn': partial(model.apply, train=False),
           'variables': variables, 'benign': images}
  f6 = bench.fig6_section(opts, setup, None, None)
  assert f6['notes'] == []
  assert {r['detector'] for r in f6['rows']} == {'inference', 'scaleup_chunked', 'strip', 'shrinkpad'}
  assert all(r['images_per_s']['median'] > 0 for r in f6['rows'])


def test_failed_run_keeps_finished_sections_apart(tmp_path, monkeypatch):
  (tmp_path / 'bench.json').write_text('previous')

  def boom(*a, **k):
    raise RuntimeError('section broke')

  monkeypatch.setattr(bench, 'train_section', boom)
  opts = bench.BenchOptions(quick=True, sections=('screen', 'train'), frameworks=('jax',),
                            out=str(tmp_path), progress=False)
  with pytest.raises(RuntimeError, match='section broke'):
    bench.run_bench(opts)
  assert (tmp_path / 'bench.json').read_text() == 'previous'
  partial = json.loads((tmp_path / 'bench.partial.json').read_text())
  assert partial['failed'] and partial['screen']['sets'][0]['decisions_equal'] == 1.0


def test_options_travel_as_json_and_git_is_optional(tmp_path):
  opts = bench.BenchOptions(models=('tiny',), batch_sizes=(2,), fig6_detectors=('strip',)).resolved()
  again = bench.BenchOptions.from_json(json.loads(json.dumps(opts.to_json()))).resolved()
  assert again == opts
  with pytest.raises(InputError, match='bogus'):
    bench.BenchOptions.from_json({'bogus': 1})
  assert bench.git_commit(tmp_path) is None
  assert bench.main(['scaleup_jax.bench']) == 2  # usage, not a traceback


def test_missing_torch_is_reported(monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` fail
  with pytest.raises(ImportError, match='pip install torch'):
    torch_port.require_torch()
  opts = bench.BenchOptions(quick=True).resolved()
  torch, _, _, message = bench._load_torch(opts)  # pylint: disable=protected-access
  assert torch is None and 'pip install torch' in message


@pytest.mark.parametrize('change, match', [
    (dict(models=['resnet99']), 'resnet99'),
    (dict(batch_sizes=[0, 8]), r'\[0, 8\]'),
    (dict(dtype='float16'), 'float16'),
    (dict(frameworks=['tf']), 'tf'),
    (dict(repeats=0), 'repeats'),
    (dict(sections=['speed']), 'speed'),
    (dict(torch_extras=['fp8']), 'fp8'),
    (dict(extra_at=['resnet20']), 'resnet20'),
    (dict(screen_alpha=1.5), 'screen_alpha'),
    (dict(chunk=0), 'chunk'),
])
def test_bad_options_fail_loudly(change, match):
  with pytest.raises(InputError, match=match):
    bench.BenchOptions(**change).resolved()


def test_time_calls_blocks_once_after_the_last_call():
  calls = []
  case = bench.Case('m', 'jax', 'infer', 1, call=lambda: calls.append(1) or len(calls),
                    sync=lambda out: calls.append(('sync', out)))
  bench._time_calls(case, 3)  # pylint: disable=protected-access
  assert calls == [1, 1, 1, ('sync', 3)]
