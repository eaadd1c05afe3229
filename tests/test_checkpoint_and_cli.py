"""Run directories and the eval.detect entry point: loading, bad input, smoke run."""

import dataclasses
import json
import shutil
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, requires_cifar
from scaleup_jax import checkpoint, data, train
from scaleup_jax.checkpoint import CheckpointError
from scaleup_jax.validation import InputError
from train.configs import badnets_resnet20


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
  work = tmp_path_factory.mktemp('quick') / 'run'
  config = badnets_resnet20.get_config('quick')
  train.train_and_evaluate(config, str(work))
  return work


def test_missing_dataset_error_names_the_place(tmp_path):
  with pytest.raises(data.DatasetNotFoundError, match=str(tmp_path)):
    data.load_split('cifar10', 'test', data_dir=tmp_path)


@requires_cifar
def test_load_split_dtype_and_range(cifar_test_small):
  d = cifar_test_small
  assert d.images.shape == (256, 32, 32, 3) and d.images.dtype == np.float32
  assert 0.0 <= d.images.min() and d.images.max() <= 1.0 and d.num_classes == 10


@requires_cifar
def test_load_run_round_trip(quick_run):
  run = checkpoint.load_run(quick_run, num_classes=10)
  assert run.trigger is not None and run.target == 0 and run.metrics['epochs'] == 1
  logits = run.apply_fn(run.variables, np.zeros((2, 32, 32, 3), np.float32))
  assert logits.shape == (2, 10)


@requires_cifar
def test_load_run_errors(quick_run, tmp_path):
  with pytest.raises(CheckpointError, match='does not exist'):
    checkpoint.load_run(tmp_path / 'nope')
  with pytest.raises(CheckpointError, match='no config.json'):
    checkpoint.load_run(tmp_path)
  with pytest.raises(CheckpointError, match='has 10 classes, expected 100'):
    checkpoint.load_run(quick_run, num_classes=100)
  # A copy with its array data removed is corrupt, and says so.
  broken = tmp_path / 'broken'
  shutil.copytree(quick_run, broken)
  for f in (broken / 'checkpoints').rglob('*'):
    if f.is_file() and 'd' in f.parent.name and f.parent.name != 'extra':
      f.write_bytes(b'garbage')
  # The manifest names the first damaged file before orbax reads any (scaleup_jax.integrity).
  with pytest.raises(checkpoint.IntegrityError, match=r"checkpoints/1/.*' has \d+ bytes, the manifest says"):
    checkpoint.load_run(broken)
  # No checkpoint step at all.
  empty = tmp_path / 'empty'
  empty.mkdir()
  shutil.copy(quick_run / 'config.json', empty / 'config.json')
  with pytest.raises(CheckpointError, match='no checkpoint found'):
    checkpoint.load_run(empty)


def run_detect(*args, timeout=300):
  return subprocess.run([sys.executable, '-m', 'eval.detect', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


@requires_cifar
def test_detect_cli_smoke(quick_run, tmp_path):
  out = tmp_path / 'res.json'
  r = run_detect('--ckpt', str(quick_run), '--num_images', '64', '--batch_size', '32',
                 '--num_defense_per_class', '5', '--out', str(out), '--noprogress',
                 '--noise_copies', '1')
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads(out.read_text())
  assert set(res['detection']) == {'data-free', 'data-limited', 'data-limited-global'}
  assert res['num_benign'] == 128 and res['num_defense'] == 50
  assert res['detection']['data-free']['auroc'] == pytest.approx(
      res['detection']['data-limited-global']['auroc'])
  assert res['throughput']['images_per_second'] > 0
  assert out.with_suffix('.png').is_file()
  assert 'AUROC' in r.stdout


@requires_cifar
@pytest.mark.parametrize('args, message', [
    (['--mode', 'data-rich'], "unknown mode 'data-rich'"),
    (['--scales', '3,0.5'], 'scales must be >= 1'),
    (['--ckpt', '/nonexistent/ckpt'], "'/nonexistent/ckpt' does not exist"),
    (['--detector', 'strap'], "unknown detector 'strap'"),
    (['--detector', 'strip', '--mode', 'data-limited'], "detector 'strip' has no mode 'data-limited'"),
    (['--detector', 'strip', '--scales', '3,5'], "detector 'strip' has no option 'scales'"),
    (['--detector_options', 'num_overlays=5'], "detector 'scaleup' has no option(s) ['num_overlays']"),
    (['--detector', 'strip', '--detector_options', 'num_overlays'], "'num_overlays' is not key=value"),
    (['--detector', 'strip', '--detector_options', 'overlays=5'], "detector 'strip' has no option(s) ['overlays']"),
])
def test_detect_cli_bad_input_is_one_line(quick_run, args, message):
  base = ['--ckpt', str(quick_run)] if '--ckpt' not in args else []
  r = run_detect(*base, *args, '--num_images', '16', '--noprogress', '--noplot', timeout=300)
  assert r.returncode == 2
  assert message in r.stderr and 'Traceback' not in r.stderr


@requires_cifar
def test_detect_cli_baseline_detector(quick_run, tmp_path):
  out = tmp_path / 'sp.json'
  r = run_detect('--ckpt', str(quick_run), '--detector', 'shrinkpad', '--detector_options',
                 'num_pads=3', '--num_images', '48', '--batch_size', '16',
                 '--num_defense_per_class', '2', '--out', str(out), '--noprogress', '--noplot')
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads(out.read_text())
  assert res['detector'] == 'shrinkpad' and set(res['detection']) == {'shrinkpad'}
  assert res['detector_config']['num_pads'] == 3
  assert res['throughput']['forwards_per_image'] == 4
  assert 0 <= res['detection']['shrinkpad']['auroc'] <= 1


@requires_cifar
def test_compare_table(quick_run, tmp_path):
  from scaleup_jax import compare
  opts = compare.CompareOptions(ckpts=(str(quick_run),), detectors=('scaleup', 'shrinkpad', 'strip'),
                                num_images=40, num_defense_per_class=2, batch_size=16,
                                out=str(tmp_path / 'cmp'), progress=False, command='test')
  summary = compare.compare(opts)
  res = summary['results'][quick_run.name]
  assert set(res) == {'scaleup', 'shrinkpad', 'strip'}
  # All detectors of one model score the same images.
  assert len({r['num_benign'] for r in res.values()}) == 1
  assert len({r['num_positives'] for r in res.values()}) == 1
  rows, titles, mat = compare.auroc_matrix(summary)
  assert titles == ['SCALE-UP (data-free)', 'SCALE-UP (data-limited)', 'shrinkpad', 'strip']
  assert mat.shape == (1, 4) and np.all((mat >= 0) & (mat <= 1))
  assert mat[0, 0] == res['scaleup']['detection']['data-free']['auroc']
  md = (tmp_path / 'cmp' / 'compare.md').read_text()
  assert 'Command: `test`' in md and quick_run.name in md
  assert len(res['scaleup']['throughput']['load_average_1min']) == 2 and '| load |' in md
  assert (tmp_path / 'cmp' / 'auroc.png').is_file()
  with pytest.raises(InputError, match="unknown detector 'nope'"):
    compare.compare(dataclasses.replace(opts, detectors=('nope',)))
  # Merging keeps rows of other models and refuses other settings.
  other = tmp_path / 'other_run'
  shutil.copytree(quick_run, other)
  merged = compare.compare(dataclasses.replace(opts, ckpts=(str(other),), merge=True,
                                               command='test2'))
  assert set(merged['results']) == {quick_run.name, 'other_run'}
  assert merged['results'][quick_run.name] == json.loads(
      json.dumps(summary['results'][quick_run.name]))
  assert 'Rows merged from: `test`' in (tmp_path / 'cmp' / 'compare.md').read_text()
  with pytest.raises(InputError, match='settings differ'):
    compare.compare(dataclasses.replace(opts, ckpts=(str(other),), merge=True, num_images=20))
  # skip_done re-runs only models without a complete row (score files on disk).
  stamp = (tmp_path / 'cmp' / 'other_run' / 'strip.json').stat().st_mtime_ns
  kept = (tmp_path / 'cmp' / quick_run.name / 'scaleup.json').stat().st_mtime_ns
  (tmp_path / 'cmp' / quick_run.name / 'strip.scores.npz').unlink()
  again = compare.compare(dataclasses.replace(opts, ckpts=(str(quick_run), str(other)), merge=True,
                                              skip_done=True, command='test3'))
  assert (tmp_path / 'cmp' / 'other_run' / 'strip.json').stat().st_mtime_ns == stamp
  assert (tmp_path / 'cmp' / quick_run.name / 'strip.scores.npz').is_file()
  # Within the incomplete row, only the detector whose scores were lost ran again.
  assert (tmp_path / 'cmp' / quick_run.name / 'scaleup.json').stat().st_mtime_ns == kept
  assert (again['results'][quick_run.name]['scaleup']['detection']
          == merged['results'][quick_run.name]['scaleup']['detection'])
  assert again['row_commands'] == {quick_run.name: 'test3', 'other_run': 'test2'}
  assert again['results']['other_run'] == merged['results']['other_run']


@requires_cifar
def test_compare_paper_protocol(quick_run, tmp_path):
  from scaleup_jax import compare
  opts = compare.CompareOptions(ckpts=(str(quick_run),), detectors=('scaleup',), num_images=40,
                                num_defense_per_class=100, batch_size=64, protocol='paper',
                                out=str(tmp_path / 'cmp'), progress=False, command='test')
  summary = compare.compare(opts)
  res = summary['results'][quick_run.name]['scaleup']
  # The paper's negatives: every evaluation image and one noisy copy of it.
  assert res['num_benign'] == 2 * 40
  assert summary['protocol'] == 'paper' and summary['jpeg_match'] is False
  md = (tmp_path / 'cmp' / 'compare.md').read_text()
  assert "the paper's evaluation sets (Sec. 5.1)" in md and '1 noisy copy (0.02·U[0,1))' in md
  # Rows of another protocol are not comparable: merging refuses them, naming the setting.
  with pytest.raises(InputError, match="settings differ.*'protocol': \\('paper', None\\)"):
    compare.compare(dataclasses.replace(opts, protocol=None, merge=True))
  # A summary written before the protocol settings existed merges as the default protocol.
  path = tmp_path / 'cmp' / 'compare.json'
  old = json.loads(path.read_text())
  old.pop('protocol'), old.pop('jpeg_match')
  path.write_text(json.dumps(old))
  with pytest.raises(InputError, match='settings differ'):
    compare.compare(dataclasses.replace(opts, merge=True))
  assert compare.compare(dataclasses.replace(opts, protocol=None, merge=True))['protocol'] is None


@requires_cifar
def test_compare_keeps_finished_rows_when_stopped(quick_run, tmp_path, monkeypatch):
  from scaleup_jax import compare, evaluate
  other = tmp_path / 'other_run'
  shutil.copytree(quick_run, other)
  real = evaluate.evaluate_detection

  def stop_on_second_model(o, ev=None):
    if Path(o.ckpt).name == 'other_run':
      raise KeyboardInterrupt  # the session ends during the second model
    return real(o, ev)

  monkeypatch.setattr(evaluate, 'evaluate_detection', stop_on_second_model)
  opts = compare.CompareOptions(ckpts=(str(quick_run), str(other)), detectors=('scaleup',),
                                num_images=40, num_defense_per_class=2, batch_size=16,
                                out=str(tmp_path / 'cmp'), progress=False, command='test')
  with pytest.raises(KeyboardInterrupt):
    compare.compare(opts)
  stored = json.loads((tmp_path / 'cmp' / 'compare.json').read_text())
  assert list(stored['results']) == [quick_run.name]
  assert stored['models'] == [str(quick_run)]
