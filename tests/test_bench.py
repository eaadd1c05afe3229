"""Benchmark smoke test (--quick) and the PyTorch-absent path."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scaleup_jax import bench, torch_port
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
                      '--noprogress'], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((tmp_path / 'bench.json').read_text())
  assert {'config', 'environment', 'results', 'checks', 'notes'} <= set(res)
  assert res['config']['models'] == ['tiny'] and res['config']['batch_sizes'] == [1, 8]
  env = res['environment']
  for key in ('jax_version', 'torch_version', 'cpu_model', 'cpu_count', 'threads', 'xla_flags'):
    assert key in env, key
  methods = {'jax_infer', 'jax_vmap', 'jax_map'}
  if _have_torch():
    methods |= {'torch_infer', 'torch_loop', 'torch_batched'}
    assert env['torch_threads'] == env['threads']
  else:
    assert 'pip install torch' in res['torch_missing']
  assert {(r['batch_size'], r['method']) for r in res['results']} == {
      (b, m) for b in (1, 8) for m in methods}
  for row in res['results']:
    s = row['images_per_s']
    assert len(s['values']) == 2 and 0 < s['min'] <= s['median'] <= s['max'], row
    assert (row['compile_s'] is not None) == (row['framework'] == 'jax')
    assert (row['detect_over_floor'] is not None) == (row['kind'] == 'detect')
  for check in res['checks']:
    for name, agree in check['agreement_with_jax_vmap'].items():
      assert agree == {'preds_equal': 1.0, 'spc_equal': 1.0}, (check, name)
  md = (tmp_path / 'bench.md').read_text()
  assert '| batch | method |' in md and 'jax_vmap' in md
  assert (tmp_path / 'bench.png').stat().st_size > 1000


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
])
def test_bad_options_fail_loudly(change, match):
  with pytest.raises(InputError, match=match):
    bench.BenchOptions(**change).resolved()
