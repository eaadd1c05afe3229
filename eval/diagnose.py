"""Pre-deployment check: a model's sink classes, per-class benign SPC and the SCALE-UP settings to use.

  python -m eval.diagnose                                   # the zoo BadNets ResNet-20
  python -m eval.diagnose --ckpt zoo/cifar10_clean_resnet20 --num_per_class 100

Needs only the model and a few benign images per class (the defender's split of
the test set, as in eval.detect); knows nothing about any attack. Prints the
diagnosis and writes diagnose.json, diagnose.md and diagnose.png to --out.
"""

from scaleup_jax.xla_flags import set_default_xla_flags

set_default_xla_flags()

from absl import app, flags, logging  # noqa: E402

from scaleup_jax import cli  # noqa: E402

flags.DEFINE_string('ckpt', None, 'Run directory of a trained model (default: the zoo BadNets ResNet-20).')
cli.define_shared_flags('data_dir', 'download', 'batch_size', 'progress')
flags.DEFINE_integer('num_per_class', 50, 'Benign images per class.')
flags.DEFINE_integer('seed', 0, 'Seed of the defender split (same as eval.detect).')
flags.DEFINE_string('out', None, 'Output directory (default runs/diagnose/<model name>).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from scaleup_jax.diagnose import report, run
  with cli.friendly_errors():
    result = run.run_diagnosis(run.DiagnoseOptions(
        ckpt=FLAGS.ckpt, data_dir=FLAGS.data_dir, download=FLAGS.download,
        num_per_class=FLAGS.num_per_class, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
        out=FLAGS.out, progress=FLAGS.progress), command=cli.command_line('eval.diagnose'))
    print(report.summary_text(result))
    print(f"wrote {result['out']}/diagnose.json, diagnose.md, diagnose.png")


if __name__ == '__main__':
  app.run(main)
