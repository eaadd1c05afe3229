"""Same seed, same everything: two fresh processes agree bit for bit.

Each process poisons the ``:quick`` training sets of three attacks (poisoned
indices, trigger arrays, poisoned images, flags), builds the evaluation split
of the zoo BadNets model with noise copies, scores it with SCALE-UP and
writes the score file; the two processes' SHA-256 digests must be equal.
(Resumed training, also across fresh processes, is checked in test_resume.py.)
"""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, requires_cifar
from test_resume import subprocess_env

ZOO_MODEL = ROOT / 'zoo' / 'cifar10_badnets_resnet20'

PROBE = r'''
import json, sys
from pathlib import Path
from scaleup_jax.xla_flags import set_default_xla_flags
set_default_xla_flags()
import jax
from scaleup_jax import evaluate, integrity, train
from train.configs import badnets_resnet20, blended_resnet20, wanet_resnet20

out = {}
for name, mod in [('badnets', badnets_resnet20), ('blended', blended_resnet20),
                  ('wanet', wanet_resnet20)]:
  cfg = mod.get_config('quick')
  k_data = jax.random.split(jax.random.key(cfg.seed), 3)[0]  # as train_and_evaluate derives it
  p, _ = train.prepare_data(cfg, k_data)
  out[name] = {'poison_indices': integrity.array_digest(p.poison_indices),
               'trigger': integrity.npz_digest(p.trigger.arrays()),
               'images': integrity.array_digest(p.train.images),
               'labels': integrity.array_digest(p.train.labels),
               'flags': integrity.array_digest(p.flags)}
res_path = Path(sys.argv[2]) / 'detect.json'
opts = evaluate.DetectOptions(ckpt=sys.argv[1], num_images=24, num_defense_per_class=2,
                              noise_copies=1, batch_size=32, out=str(res_path), plot=False,
                              progress=False)
ev = evaluate.prepare_eval_set(opts)
out['eval'] = {'defense_idx': integrity.array_digest(ev.defense_idx),
               'benign': integrity.array_digest(ev.benign.images),
               'benign_with_noise': integrity.array_digest(ev.benign_images),
               'poisoned_with_noise': integrity.array_digest(ev.poisoned_images)}
res = evaluate.evaluate_detection(opts, ev)
out['scores'] = integrity.npz_digest(
    integrity.load_npz_checked(res_path.with_suffix('.scores.npz'), 'scores'))
out['detection'] = res['detection']
print('PROBE ' + json.dumps(out, sort_keys=True))
'''


def probe(tmp_path, i):
  d = tmp_path / f'p{i}'
  d.mkdir()
  r = subprocess.run([sys.executable, '-c', PROBE, str(ZOO_MODEL), str(d)], cwd=ROOT,
                     env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  line = next(l for l in r.stdout.splitlines() if l.startswith('PROBE '))
  return json.loads(line[len('PROBE '):])


@requires_cifar
@pytest.mark.skipif(not (ZOO_MODEL / 'checkpoints').is_dir(), reason='zoo model not present')
def test_two_fresh_processes_agree_bit_for_bit(tmp_path):
  a, b = probe(tmp_path, 0), probe(tmp_path, 1)
  for key in ('badnets', 'blended', 'wanet', 'eval', 'scores', 'detection'):
    assert a[key] == b[key], key
  # And the digests are of something: three attacks, three different poisonings.
  assert len({a[k]['images'] for k in ('badnets', 'blended', 'wanet')}) == 3
