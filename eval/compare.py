"""Compares SCALE-UP with the baseline detectors on the zoo models (AUROC and images/s).

  python -m eval.compare                                  # every attacked zoo model
  python -m eval.compare --out docs/results/compare       # what the docs show
  python -m eval.compare --ckpts zoo/cifar10_badnets_resnet20 --detectors scaleup,strip
  python -m eval.compare --ckpts zoo/cifar10_wanet_resnet20 --merge --out docs/results/compare

Writes compare.json, compare.md (tables) and auroc.png (heat map) under --out.
"""

from scaleup_jax.xla_flags import set_default_xla_flags

set_default_xla_flags()

from absl import app, flags, logging  # noqa: E402

from scaleup_jax import cli  # noqa: E402

flags.DEFINE_list('ckpts', [], 'Run directories (default: every zoo model with a trigger).')
flags.DEFINE_list('detectors', ['scaleup', 'strip', 'shrinkpad', 'deepsweep', 'frequency',
                                'ibd_psc', 'teco'], 'Detectors to compare.')
flags.DEFINE_integer('num_images', 1000, 'Evaluation images per model (before poisoning).')
flags.DEFINE_integer('num_defense_per_class', 100, 'Defender images per class.')
flags.DEFINE_integer('seed', 0, 'Seed of the split and of the detectors.')
flags.DEFINE_string('out', 'runs/compare', 'Output directory.')
flags.DEFINE_bool('merge', False, "Keep other models' rows of an existing --out/compare.json (same settings).")
flags.DEFINE_bool('skip_done', False, "With --merge: don't re-run models already in --out/compare.json.")
cli.define_shared_flags('batch_size', 'data_dir', 'progress', 'protocol', 'jpeg_match')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from scaleup_jax import compare
  with cli.friendly_errors():
    opts = cli.options_from_flags(compare.CompareOptions, command=cli.command_line('eval.compare'))
    summary = compare.compare(opts)
    print(compare.markdown_tables(summary))
    print(f"wrote {summary['out']}/compare.json, compare.md, auroc.png")


if __name__ == '__main__':
  app.run(main)
