"""Checks behind the paper-protocol choices (docs/reproduction.md), on zoo models.

  python -m eval.protocol noise            # BA / ASR under the noises and JPEG, every zoo model
  python -m eval.protocol noise --ckpts zoo/cifar10_badnets_resnet20 --num_images 1000
  python -m eval.protocol forms --compare_dir docs/results/compare   # data-limited forms' AUROC

``noise`` uses the evaluation images of eval.detect's split (--seed, 100 defender
images per class held out) and writes noise.json; ``forms`` reads the score files
of an eval.compare directory and writes forms.json; both print a markdown table.
"""

from scaleup_jax.xla_flags import set_default_xla_flags

set_default_xla_flags()

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from absl import app, flags, logging  # noqa: E402

from scaleup_jax import cli  # noqa: E402

flags.DEFINE_list('ckpts', [], 'noise: run directories (default: every attacked zoo model).')
flags.DEFINE_integer('num_images', 1000, 'noise: evaluation images per model.')
flags.DEFINE_integer('seed', 0, 'noise: seed of the split (as eval.detect); the noise uses seed + 1.')
flags.DEFINE_string('compare_dir', 'docs/results/compare', 'forms: an eval.compare output directory.')
cli.define_shared_flags('data_dir')
flags.DEFINE_string('out', 'runs/protocol', 'Output directory.')
FLAGS = flags.FLAGS


def _noise(out: Path) -> None:
  import jax
  from scaleup_jax import checkpoint as ckpt_lib, compare, data, evaluate, protocol, scaleup
  from scaleup_jax.batching import map_batches
  test = data.load_split('cifar10', 'test', FLAGS.data_dir)
  k_split = jax.random.split(jax.random.key(FLAGS.seed), 3)[0]
  _, idx = evaluate.split_test_set(k_split, test.labels, test.num_classes, 100, FLAGS.num_images)
  x, y = test.images[idx], test.labels[idx]
  ckpts = FLAGS.ckpts or [str(c) for c in compare.zoo_attacked_models()]
  result = {'num_images': FLAGS.num_images, 'seed': FLAGS.seed, 'models': {}}
  for ckpt in ckpts:
    run = ckpt_lib.load_run(ckpt)
    classify = jax.jit(scaleup.classifier_from_logits(run.apply_fn, run.variables))
    effects = protocol.perturbation_effects(
        jax.random.key(FLAGS.seed + 1), lambda im: map_batches(classify, im, 250), x, y,
        run.trigger.apply(x[y != run.target]), run.target)
    result['models'][Path(ckpt).name] = {'attack': run.config.attack, 'target': run.target, **effects}
    print(Path(ckpt).name, json.dumps(effects), flush=True)
  (out / 'noise.json').write_text(json.dumps(result, indent=2))
  cols = list(next(iter(result['models'].values())))[2:]
  print('\n| model | ' + ' | '.join(cols) + ' |\n|---|' + '---:|' * len(cols))
  for name, r in result['models'].items():
    print(f'| {name} | ' + ' | '.join(
        f"{r[c]['ba']:.3f} / {r[c]['asr']:.3f} / {r[c]['benign_to_target']:.3f}" for c in cols) + ' |')


def _forms(out: Path) -> None:
  from scaleup_jax import data, protocol, scaleup
  test = data.load_split('cifar10', 'test', FLAGS.data_dir)
  root = Path(FLAGS.compare_dir)
  result = {'compare_dir': str(root), 'models': {}}
  for d in sorted(p for p in root.iterdir() if (p / 'scaleup.scores.npz').is_file()):
    result['models'][d.name] = protocol.stored_form_aurocs(d, test)
    print(d.name, flush=True)
  (out / 'forms.json').write_text(json.dumps(result, indent=2))
  cols = ['data-free'] + [f'{f}/{g}' for g in scaleup.GROUP_BY for f in scaleup.DATA_LIMITED_FORMS]
  print('\n| model | ' + ' | '.join(cols) + ' |\n|---|' + '---:|' * len(cols))
  for name, r in result['models'].items():
    print(f'| {name} | ' + ' | '.join(f'{r[c]:.3f}' for c in cols) + ' |')


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) != 2 or argv[1] not in ('noise', 'forms'):
    raise app.UsageError(f'expected one command, noise or forms; got {argv[1:]}')
  with cli.friendly_errors():
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    (_noise if argv[1] == 'noise' else _forms)(out)
    print(f'wrote {out}/{argv[1]}.json  (python -m eval.protocol {" ".join(sys.argv[1:])})')


if __name__ == '__main__':
  app.run(main)
