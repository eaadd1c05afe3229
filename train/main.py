"""Trains a (backdoored) classifier.

  python -m train.main --config train/configs/badnets_resnet20.py --workdir runs/badnets
  python -m train.main --config train/configs/badnets_resnet20.py:quick --workdir /tmp/q
  python -m train.main --config ... --config.num_epochs=5 --config.poison_rate=0.05

Re-running with the same --workdir resumes from the last saved epoch.
"""

from scaleup_jax.xla_flags import set_default_xla_flags

set_default_xla_flags()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from scaleup_jax import cli  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'train/configs/badnets_resnet20.py',
                                'Training config file (append :quick for a tiny run).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.', required=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  from scaleup_jax import train
  with cli.friendly_errors():
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
