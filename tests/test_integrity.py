"""Integrity: every saved artefact refuses to load when damaged, and says which file.

The fault-injection suite runs on copies of two committed zoo runs (no training):
``cifar10_badnets_resnet20`` and ``sweeps/badnets_rate0.1_size3`` have the same
architecture, so the second is "another run, shape-compatible, other weights".
Each fault must raise its clear error and leave every file as it was.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import ROOT
from scaleup_jax import attacks, checkpoint, integrity, poison
from scaleup_jax.checkpoint import CheckpointError
from scaleup_jax.integrity import IntegrityError, MissingManifestWarning

ZOO_A = ROOT / 'zoo' / 'cifar10_badnets_resnet20'
ZOO_B = ROOT / 'zoo' / 'sweeps' / 'badnets_rate0.1_size3'
requires_zoo = pytest.mark.skipif(not (ZOO_A / 'checkpoints').is_dir() or
                                  not (ZOO_B / 'checkpoints').is_dir(),
                                  reason='zoo run directories not present')


def snapshot(root: Path) -> dict:
  """``{relative path: sha256}`` of every file under ``root``."""
  return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(Path(root).rglob('*')) if p.is_file()}


def flip(path: Path) -> None:
  """XORs a 64-byte block in the middle of ``path`` (data, not a header field)."""
  b = bytearray(path.read_bytes())
  mid = len(b) // 2
  for i in range(max(0, mid - 32), min(len(b), mid + 32)):
    b[i] ^= 0xFF
  path.write_bytes(bytes(b))


def truncate(path: Path) -> None:
  path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def copy_run(src: Path, dst: Path, seal: bool = True) -> Path:
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns(integrity.MANIFEST))
  if seal:
    checkpoint.seal_run(dst)
  return dst


@pytest.fixture(scope='module')
def sealed_pair(tmp_path_factory):
  """Sealed copies of two shape-compatible runs: ``(a, b)`` (read-only templates)."""
  base = tmp_path_factory.mktemp('integrity')
  return copy_run(ZOO_A, base / 'a'), copy_run(ZOO_B, base / 'b')


def largest_weight_file(run: Path) -> Path:
  step = max(int(p.name) for p in (run / 'checkpoints').iterdir() if p.name.isdigit())
  files = (run / 'checkpoints' / str(step) / 'model' / 'ocdbt.process_0' / 'd').iterdir()
  return max(files, key=lambda p: p.stat().st_size)


def artefact_path(run: Path, artefact: str) -> Path:
  if artefact == 'weights':
    return largest_weight_file(run)
  return run / {'config': 'config.json', 'trigger': 'trigger.npz',
                'metrics': 'metrics.json', 'manifest': integrity.MANIFEST}[artefact]


def other_run_file(a: Path, b: Path, artefact: str, tmp_path: Path) -> bytes:
  """The bytes of the same artefact from another run."""
  if artefact == 'trigger':  # the zoo pair share their trigger: make one of another seed
    trig = poison.badnets_trigger(jax.random.key(7), (32, 32, 3), size=3)
    poison.save_trigger(tmp_path / 'other.npz', trig, 0, [1, 2, 3])
    return (tmp_path / 'other.npz').read_bytes()
  return artefact_path(b, artefact).read_bytes()


# ------------------------------------------------------------- run directories

RUN_CASES = [(art, fault) for art in ('weights', 'config', 'trigger', 'metrics', 'manifest')
             for fault in ('flip', 'truncate', 'missing', 'other_run')]


@requires_zoo
@pytest.mark.parametrize('artefact, fault', RUN_CASES, ids=[f'{a}-{f}' for a, f in RUN_CASES])
def test_run_directory_fault_is_refused(sealed_pair, tmp_path, artefact, fault):
  a, b = sealed_pair
  run = tmp_path / 'run'
  shutil.copytree(a, run)
  target = artefact_path(run, artefact)
  if fault == 'flip':
    flip(target)
  elif fault == 'truncate':
    truncate(target)
  elif fault == 'missing':
    target.unlink()
  else:
    target.write_bytes(other_run_file(a, b, artefact, tmp_path))
  before = snapshot(run)
  if artefact == 'manifest' and fault == 'missing':
    # An unsealed directory (an older run) loads, but never silently.
    with pytest.warns(MissingManifestWarning, match='has no manifest.json'):
      checkpoint.load_run(run)
  else:
    expected = CheckpointError if (artefact, fault) == ('config', 'missing') else IntegrityError
    with pytest.raises(expected) as e:
      checkpoint.load_run(run)
    msg = str(e.value)
    assert '\n' not in msg
    if artefact != 'manifest':  # a damaged manifest may name the entry its damage hit
      assert target.name in msg, msg
  assert snapshot(run) == before  # nothing touched


@requires_zoo
def test_weights_of_another_run_are_caught_by_their_digests(sealed_pair, tmp_path):
  """With the file hashes out of the way, the restored arrays' digests still catch it."""
  a, b = sealed_pair
  run = tmp_path / 'run'
  shutil.copytree(a, run)
  step = next(p.name for p in (run / 'checkpoints').iterdir() if p.name.isdigit())
  step_b = next(p.name for p in (b / 'checkpoints').iterdir() if p.name.isdigit())
  shutil.rmtree(run / 'checkpoints' / step / 'model')
  shutil.copytree(b / 'checkpoints' / step_b / 'model', run / 'checkpoints' / step / 'model')
  manifest = json.loads((run / integrity.MANIFEST).read_text())
  manifest['files'] = {k: v for k, v in manifest['files'].items()
                       if not k.startswith('checkpoints/')}
  manifest['checkpoints'][step].pop('files_recorded')  # as after a kill before hashing
  integrity.save_manifest(run, manifest)
  before = snapshot(run)
  with pytest.raises(IntegrityError, match=r"weights of .*array\(s\) differ from the manifest"):
    checkpoint.load_run(run)
  assert snapshot(run) == before


@requires_zoo
def test_checkpoint_step_of_another_run_is_refused(sealed_pair, tmp_path):
  a, b = sealed_pair
  run = tmp_path / 'run'
  shutil.copytree(a, run)
  step_b = next(p.name for p in (b / 'checkpoints').iterdir() if p.name.isdigit())
  shutil.copytree(b / 'checkpoints' / step_b, run / 'checkpoints' / '99')  # now the latest
  with pytest.raises(IntegrityError, match=r"checkpoints/99' is not recorded in"):
    checkpoint.load_run(run)


@requires_zoo
def test_unlisted_file_in_checkpoint_is_refused(sealed_pair, tmp_path):
  a, _ = sealed_pair
  run = tmp_path / 'run'
  shutil.copytree(a, run)
  extra = largest_weight_file(run).with_name('0123456789abcdef0123456789abcdef')
  extra.write_bytes(b'\0' * 64)
  with pytest.raises(IntegrityError, match='0123456789abcdef0123456789abcdef.*is not listed'):
    checkpoint.load_run(run)


@requires_zoo
@pytest.mark.parametrize('sealed', [True, False], ids=['sealed', 'unsealed'])
def test_config_that_disagrees_with_the_weights(tmp_path, sealed):
  run = copy_run(ZOO_A, tmp_path / 'run', seal=sealed)
  cfg = json.loads((run / 'config.json').read_text())
  cfg['model'] = 'tiny'
  (run / 'config.json').write_text(json.dumps(cfg, indent=2))
  before = snapshot(run)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', MissingManifestWarning)
    if sealed:  # the manifest names the edited file before anything is restored
      with pytest.raises(IntegrityError, match=r"config.json' has SHA-256|config.json' has \d+ bytes"):
        checkpoint.load_run(run)
    else:  # the shapes still catch it
      with pytest.raises(CheckpointError, match="does not match model 'tiny'"):
        checkpoint.load_run(run)
  assert snapshot(run) == before


@requires_zoo
def test_sealed_run_loads_silently_and_bit_identically(sealed_pair, tmp_path):
  a, _ = sealed_pair
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # no warning of any kind
    run = checkpoint.load_run(a)
  unsealed = copy_run(ZOO_A, tmp_path / 'unsealed', seal=False)
  with pytest.warns(MissingManifestWarning, match='has no manifest.json'):
    plain = checkpoint.load_run(unsealed)
  assert integrity.tree_digest(run.variables) == integrity.tree_digest(plain.variables)
  assert snapshot(unsealed) == snapshot(ZOO_A) or (ZOO_A / integrity.MANIFEST).is_file()


def test_missing_manifest_warning_is_one_line(tmp_path):
  (tmp_path / 'x').write_text('1')
  with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always')
    assert integrity.verify_manifest(tmp_path) is None
  text = warnings.formatwarning(w[0].message, w[0].category, w[0].filename, w[0].lineno)
  assert text.count('\n') == 1 and text.startswith('warning: ')


ZOO_DIRS = sorted([p for p in (ROOT / 'zoo').glob('cifar10_*') if p.is_dir()] +
                  [p for p in (ROOT / 'zoo' / 'v2').glob('cifar10_*') if p.is_dir()] +
                  [p for p in (ROOT / 'zoo' / 'vgg').glob('*') if p.is_dir()] +
                  [p for p in (ROOT / 'zoo' / 'sweeps').glob('*') if p.is_dir()])


@pytest.mark.skipif(not ZOO_DIRS, reason='no zoo')
def test_committed_zoo_is_sealed():
  """Every committed zoo run has a manifest, and its files match it."""
  unsealed = [p.name for p in ZOO_DIRS if not (p / integrity.MANIFEST).is_file()]
  assert not unsealed, f'run `python -m scaleup_jax.integrity seal` on {unsealed}'
  for p in ZOO_DIRS:
    integrity.verify_manifest(p)


def test_resume_refuses_a_poisoning_other_than_the_saved_one(tmp_path):
  """The run files are rewritten on every start; on resume they must describe the same poisoning."""
  from train.configs import badnets_resnet20
  config = badnets_resnet20.get_config('quick')
  trig = poison.badnets_trigger(jax.random.key(0), (32, 32, 3), size=3)
  checkpoint.save_run_files(tmp_path, config, trig, np.arange(10))
  manifest = integrity.read_manifest(tmp_path)
  assert set(manifest['files']) == {'config.json', 'trigger.npz'}
  stamp = (tmp_path / 'trigger.npz').stat().st_mtime_ns
  checkpoint.save_run_files(tmp_path, config, trig, np.arange(10), resuming=True)
  assert (tmp_path / 'trigger.npz').stat().st_mtime_ns == stamp  # unchanged: not rewritten
  before = snapshot(tmp_path)
  other = poison.badnets_trigger(jax.random.key(1), (32, 32, 3), size=3)
  for trigger, idx in [(other, np.arange(10)), (trig, np.arange(1, 11))]:
    with pytest.raises(IntegrityError, match='differs from the poisoning this config regenerates'):
      checkpoint.save_run_files(tmp_path, config, trigger, idx, resuming=True)
  assert snapshot(tmp_path) == before


# ------------------------------------------------------------- single files

def _trigger_file(path):
  trig = poison.badnets_trigger(jax.random.key(0), (8, 8, 3), size=2)
  poison.save_trigger(path, trig, 3, [1, 2])


def _trigger_load(path):
  poison.load_trigger(path)


def _cache_file(path):
  attacks.save_poison_cache(path, np.arange(5), np.random.default_rng(0).random((5, 8, 8, 3)),
                            {'attack': 'label_consistent'})


def _cache_load(path):
  attacks.load_poison_cache(path, {'attack': 'label_consistent'}, np.arange(5))


def _scores_file(path):
  rng = np.random.default_rng(0)
  integrity.save_npz_checked(path, 'scores', benign_score=rng.random(300),
                             poisoned_score=rng.random(300), successful=rng.random(300) > 0.5)


def _scores_load(path):
  integrity.load_npz_checked(path, 'scores')


def _json_file(path):
  integrity.save_json_checked(path, {'threshold': 0.25, 'fpr': [0.01, 0.05],
                                     'per_class': {str(k): k / 10 for k in range(10)}},
                              'calibration')


def _json_load(path):
  integrity.load_json_checked(path, 'calibration')


FILE_KINDS = {
    'trigger': ('t.npz', _trigger_file, _trigger_load),
    'poison_cache': ('poison_cache.npz', _cache_file, _cache_load),
    'scores': ('detect.scores.npz', _scores_file, _scores_load),
    'calibration': ('calibration.json', _json_file, _json_load),
}
FILE_CASES = [(k, f) for k in FILE_KINDS for f in ('flip', 'truncate', 'missing', 'other_kind')]


@pytest.mark.parametrize('kind, fault', FILE_CASES, ids=[f'{k}-{f}' for k, f in FILE_CASES])
def test_single_file_fault_is_refused(tmp_path, kind, fault):
  name, make, load = FILE_KINDS[kind]
  path = tmp_path / name
  make(path)
  load(path)  # intact: loads
  if fault == 'flip':
    flip(path)
  elif fault == 'truncate':
    truncate(path)
  elif fault == 'missing':
    path.unlink()
  elif path.suffix == '.json':  # a checked file of another kind put in its place
    integrity.save_json_checked(path, {'threshold': 0.25}, 'operating_point')
  else:
    other = next(k for k in FILE_KINDS if k != kind and FILE_KINDS[k][0].endswith('.npz'))
    FILE_KINDS[other][1](path)
  before = snapshot(tmp_path)
  with pytest.raises(IntegrityError) as e:
    load(path)
  assert str(path) in str(e.value) and '\n' not in str(e.value)
  assert snapshot(tmp_path) == before


def test_checked_json_detects_an_edited_value(tmp_path):
  path = tmp_path / 'c.json'
  _json_file(path)
  doc = json.loads(path.read_text())
  doc['payload']['threshold'] = 0.3
  path.write_text(json.dumps(doc, indent=4))
  with pytest.raises(IntegrityError, match='payload has SHA-256'):
    _json_load(path)
  # Reformatting alone is not a change.
  doc['payload']['threshold'] = 0.25
  path.write_text(json.dumps(doc))
  _json_load(path)


def test_checked_json_round_trip_of_numpy_and_int_keys(tmp_path):
  payload = {'a': np.float32(0.1), 'b': np.arange(3), 2: 'two', 10: 'ten', 't': (1, 2)}
  integrity.save_json_checked(tmp_path / 'x.json', payload, 'calibration')
  back = integrity.load_json_checked(tmp_path / 'x.json', 'calibration')
  assert back == {'a': float(np.float32(0.1)), 'b': [0, 1, 2], '2': 'two', '10': 'ten',
                  't': [1, 2]}


def test_older_files_without_checksum_load_with_a_warning(tmp_path):
  trig = poison.badnets_trigger(jax.random.key(0), (8, 8, 3), size=2)
  np.savez_compressed(tmp_path / 'old.npz', kind=np.asarray(trig.kind), target=np.int64(1),
                      poison_indices=np.arange(3), **trig.arrays())
  with pytest.warns(integrity.UncheckedFileWarning, match='carries no checksum'):
    back, target = poison.load_trigger(tmp_path / 'old.npz')
  assert target == 1 and np.array_equal(back.mask, trig.mask)
  (tmp_path / 'old.json').write_text('{"a": 1}')
  with pytest.raises(IntegrityError, match='carries no checksum'):
    integrity.load_json_checked(tmp_path / 'old.json', 'calibration')
  with pytest.warns(integrity.UncheckedFileWarning):
    assert integrity.load_json_checked(tmp_path / 'old.json', 'x', allow_unchecked=True) == {'a': 1}


def test_poison_cache_of_other_settings_is_refused(tmp_path):
  from scaleup_jax.validation import InputError
  _cache_file(tmp_path / 'poison_cache.npz')
  with pytest.raises(InputError, match='other attack settings'):
    attacks.load_poison_cache(tmp_path / 'poison_cache.npz', {'attack': 'tuap'}, np.arange(5))
  # Other indices: not this run's cache, recomputed (None), not an error.
  assert attacks.load_poison_cache(tmp_path / 'poison_cache.npz',
                                   {'attack': 'label_consistent'}, np.arange(6)) is None


# ------------------------------------------------------------- atomic writes

@pytest.mark.parametrize('writer', ['bytes', 'json', 'npz'])
def test_kill_during_atomic_write_keeps_the_old_file(tmp_path, writer):
  """A process killed between writing the temporary file and renaming it."""
  path = tmp_path / ('f.npz' if writer == 'npz' else 'f.json')
  code = {
      'bytes': 'integrity.atomic_write_bytes(p, bytes(n))',
      'json': "integrity.atomic_write_json(p, {'new': list(range(n))})",
      'npz': "integrity.save_npz_checked(p, 'scores', a=np.arange(n))",
  }[writer]
  script = ('import sys, numpy as np; from pathlib import Path; from scaleup_jax import integrity\n'
            f'p, n = Path(sys.argv[1]), int(sys.argv[2]); {code}\n')
  subprocess.run([sys.executable, '-c', script, str(path), '1000'], check=True, cwd=ROOT)
  old = path.read_bytes()
  env = {**os.environ, integrity.FAULT_ENV: f'atomic_write:{path.name}'}
  r = subprocess.run([sys.executable, '-c', script, str(path), '2000'], env=env, cwd=ROOT,
                     capture_output=True, text=True)
  assert r.returncode == integrity.FAULT_EXIT_CODE, r.stderr
  assert path.read_bytes() == old  # the old file, whole
  leftovers = [p.name for p in tmp_path.iterdir() if p.name != path.name]
  assert all(n.startswith(f'.{path.name}.') and n.endswith('.tmp') for n in leftovers), leftovers


def test_seal_cli_refuses_a_sealed_run_and_verify_reports_damage(tmp_path):
  if not (ZOO_A / 'checkpoints').is_dir():
    pytest.skip('zoo not present')
  run = copy_run(ZOO_A, tmp_path / 'run')
  cmd = [sys.executable, '-m', 'scaleup_jax.integrity']
  r = subprocess.run(cmd + ['seal', str(run)], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 2 and 'already has a manifest.json' in r.stderr
  assert 'Traceback' not in r.stderr
  flip(largest_weight_file(run))
  r = subprocess.run(cmd + ['verify', str(run)], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 2 and largest_weight_file(run).name in r.stderr
  assert r.stderr.strip().count('\n') == 0
