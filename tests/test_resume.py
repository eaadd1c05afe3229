"""Interrupted training resumes to the same model, and no checkpoint or cache is lost.

A ``:quick`` Label-Consistent run (tiny model, 256 images, 3 epochs; its PGD
images are an attack cache, ``poison_cache.npz``) is killed with
``os._exit`` (as ``kill -9``: no cleanup runs) at several points through
``$SCALEUP_JAX_FAULT`` and resumed each time; its final parameters must be
bit-identical to those of an uninterrupted run with the same seed in another
fresh process. Subprocesses share a persistent JAX compilation cache, which
takes compiling out of the time of every process after the first.
"""

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import ROOT, requires_cifar
from scaleup_jax import checkpoint, integrity

CONFIG = str(ROOT / 'train/configs/label_consistent_resnet20.py') + ':quick'
EPOCHS = 3
# (fault point, what the kill interrupts)
KILLS = [
    ('atomic_write:poison_cache.npz', 'writing the attack cache (temporary file, not renamed)'),
    ('checkpoint_saved:2', 'writing checkpoint 2 (orbax write in flight)'),
    ('atomic_write:manifest.json', 'writing the manifest (first write of the process)'),
    ('epoch_start:2', 'between epochs 2 and 3'),
]


def subprocess_env(fault: str | None = None) -> dict:
  """The environment of a training subprocess: offline data, shared compilation cache."""
  env = {k: v for k, v in os.environ.items() if k != integrity.FAULT_ENV}
  cache = os.environ.get('SCALEUP_JAX_TEST_COMPILATION_CACHE',
                         str(ROOT / '.pytest_cache' / 'jax_compilation_cache'))
  env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0', PYTHONUNBUFFERED='1')
  if fault:
    env[integrity.FAULT_ENV] = fault
  return env


def train(workdir, fault=None, epochs=EPOCHS, timeout=240):
  cmd = [sys.executable, '-m', 'train.main', '--config', CONFIG, '--workdir', str(workdir),
         f'--config.num_epochs={epochs}']
  return subprocess.run(cmd, cwd=ROOT, env=subprocess_env(fault), capture_output=True,
                        text=True, timeout=timeout)


def committed_steps(workdir) -> list[int]:
  d = workdir / 'checkpoints'
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def verified(workdir):
  """The run loaded with every integrity check, and no warning (it has a manifest)."""
  with warnings.catch_warnings():
    warnings.simplefilter('error', integrity.MissingManifestWarning)
    return checkpoint.verify_run(workdir)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """An uninterrupted run and the same run killed at every point of :data:`KILLS`."""
  base = tmp_path_factory.mktemp('resume')
  r = train(base / 'uninterrupted')
  assert r.returncode == 0, r.stderr[-3000:]
  work = base / 'interrupted'
  log = []
  for fault, what in KILLS:
    before = committed_steps(work) if work.exists() else []
    r = train(work, fault)
    assert r.returncode == integrity.FAULT_EXIT_CODE, (fault, r.returncode, r.stderr[-3000:])
    assert f'killed at {fault}' in r.stderr
    after = committed_steps(work)
    log.append({'fault': fault, 'what': what, 'steps_before': before, 'steps_after': after,
                'resumed': 'Resuming from epoch' in r.stdout,
                'leftover_cache': (work / 'poison_cache.npz').is_file(),
                'orbax_tmp': sorted(p.name for p in (work / 'checkpoints').glob('*tmp*'))
                if (work / 'checkpoints').is_dir() else [],
                'loads': after and verified(work) is not None})
  r = train(work)
  assert r.returncode == 0, r.stderr[-3000:]
  return base / 'uninterrupted', work, log


@requires_cifar
def test_kills_lose_no_checkpoint_and_leave_it_verifiable(runs):
  _, _, log = runs
  first = log[0]
  assert first['steps_after'] == [] and not first['leftover_cache']  # killed before renaming
  for entry in log[1:]:
    # Never fewer (or older) committed steps than before the kill, and they verify.
    assert entry['steps_after'] and max(entry['steps_after']) >= max(entry['steps_before'] or [0])
    assert entry['loads'], entry
  assert 1 in log[1]['steps_after']  # the kill during checkpoint 2 kept checkpoint 1
  assert all(e['resumed'] for e in log[2:])


@requires_cifar
def test_resumed_model_is_bit_identical_to_an_uninterrupted_one(runs):
  base, work, _ = runs
  a, b = verified(base), verified(work)
  assert integrity.tree_digest(a.variables) == integrity.tree_digest(b.variables)
  ma, mb = (json.loads((d / 'metrics.json').read_text()) for d in (base, work))
  assert [h['epoch'] for h in mb['history']] == [1, 2, 3]
  assert (ma['ba'], ma['asr']) == (mb['ba'], mb['asr'])
  # The manifests record the same weights; no half-written orbax step is left behind.
  steps = committed_steps(work)
  assert steps == committed_steps(base) == [EPOCHS]
  dig = [json.loads((d / integrity.MANIFEST).read_text())['checkpoints'][str(EPOCHS)]
         for d in (base, work)]
  assert dig[0]['model'] == dig[1]['model'] and dig[0]['train'] == dig[1]['train']
  assert not list((work / 'checkpoints').glob('*tmp*'))


@requires_cifar
def test_attack_cache_and_trigger_survive_the_kills_unchanged(runs):
  base, work, _ = runs
  ca, cb = (integrity.load_npz_checked(d / 'poison_cache.npz', 'poison_cache')
            for d in (base, work))
  assert ca['images'].tobytes() == cb['images'].tobytes()
  np.testing.assert_array_equal(ca['indices'], cb['indices'])
  ta, tb = (integrity.npz_digest(integrity.load_npz_checked(d / 'trigger.npz', 'trigger'))
            for d in (base, work))
  assert ta == tb


@requires_cifar
def test_refused_resume_changes_nothing(runs, tmp_path):
  """A damaged checkpoint stops the resume with one line, before any file is rewritten."""
  from test_integrity import flip, largest_weight_file, snapshot
  _, work, _ = runs
  run = tmp_path / 'run'
  shutil.copytree(work, run)
  flip(largest_weight_file(run))
  before = snapshot(run)
  r = train(run, epochs=EPOCHS + 1)
  assert r.returncode == 2, r.stderr[-3000:]
  err = [line for line in r.stderr.splitlines() if line.startswith('error:')]
  assert len(err) == 1 and largest_weight_file(run).name in err[0] and 'Traceback' not in r.stderr
  assert snapshot(run) == before


@requires_cifar
def test_run_started_before_manifests_resumes_and_gets_one(runs, tmp_path):
  """An older run (no manifest, files without checksums) resumes after one warning line."""
  _, work, _ = runs
  run = tmp_path / 'old'
  shutil.copytree(work, run)
  (run / integrity.MANIFEST).unlink()
  for name in ('trigger.npz', 'poison_cache.npz'):  # as the old code wrote them
    with np.load(run / name) as z:
      arrays = {k: z[k] for k in z.files if k != integrity.NPZ_INTEGRITY_KEY}
    np.savez_compressed(run / name, **arrays)
  r = train(run, epochs=EPOCHS + 1)
  assert r.returncode == 0, r.stderr[-3000:]
  warned = [line for line in r.stderr.splitlines() if line.startswith('warning:')]
  assert any('has no manifest.json' in line for line in warned), r.stderr[-3000:]
  assert f'Resuming from epoch {EPOCHS}' in r.stdout
  assert committed_steps(run) == [EPOCHS + 1]
  verified(run)  # the manifest was written from the resume on
