"""Flags backdoor-poisoned test images of a trained model with SCALE-UP (or a baseline).

  python -m eval.detect                       # the zoo BadNets ResNet-20
  python -m eval.detect --ckpt zoo/cifar10_badnets_resnet20 --num_images 2000
  python -m eval.detect --mode data-free --scales 3,5,7,9,11 --out results.json
  python -m eval.detect --detector strip --detector_options num_overlays=50

Prints BA, ASR, AUROC and TPR at 1%/5% FPR (data-free and data-limited) and
throughput, and writes them as JSON (plus a PNG of the scores and ROC).
"""

from scaleup_jax.xla_flags import set_default_xla_flags

set_default_xla_flags()

from absl import app, flags, logging  # noqa: E402

from scaleup_jax import cli  # noqa: E402

flags.DEFINE_string('ckpt', None, 'Run directory of a trained model (default: zoo BadNets ResNet-20).')
flags.DEFINE_string('data_dir', None, 'tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).')
flags.DEFINE_bool('download', False, 'Let tfds download the dataset if it is absent (needs network).')
flags.DEFINE_integer('num_images', 0, 'Evaluation images taken from the test set (0 = all not held by the defender).')
flags.DEFINE_integer('num_defense_per_class', 100, 'Benign images per class for the data-limited statistics.')
flags.DEFINE_integer('batch_size', 256, 'Images per compiled call.')
flags.DEFINE_list('scales', ['3', '5', '7', '9', '11'], 'Amplification factors, each >= 1.')
flags.DEFINE_string('mode', 'both', 'data-free, data-limited or both.')
flags.DEFINE_string('method', 'auto', "How scales are batched: 'vmap' (one batch), 'map' "
                    "(sequential) or 'auto' (map on CPU from batch 32, as measured by eval.bench; "
                    "vmap otherwise).")
flags.DEFINE_string('detector', 'scaleup', 'Detector: scaleup, strip, shrinkpad, deepsweep, frequency, ibd_psc or teco.')
flags.DEFINE_list('detector_options', [], 'Baseline options as key=value (numbers parsed), e.g. num_overlays=50.')
flags.DEFINE_bool('keep_all_poisoned', False, 'Score every poisoned image, not only those the attack fooled.')
flags.DEFINE_integer('noise_copies', 0, 'Add this many Gaussian-noised copies of every benign and poisoned image.')
flags.DEFINE_float('noise_std', 0.05, 'Std of that noise (pixels in [0, 1]).')
flags.DEFINE_integer('seed', 0, 'Seed of the defender/evaluation split and the noise.')
flags.DEFINE_string('out', None, 'JSON output path (default runs/detect/<ckpt name>/detect.json).')
flags.DEFINE_bool('plot', True, 'Also write a PNG of the score distributions and ROC curves.')
flags.DEFINE_bool('progress', True, 'Show progress bars.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from scaleup_jax import evaluate
  with cli.friendly_errors():
    try:
      scales = tuple(float(s) for s in FLAGS.scales)
    except ValueError:
      raise ValueError(f'--scales must be numbers; got {FLAGS.scales}') from None
    opts = evaluate.DetectOptions(
        detector=FLAGS.detector, detector_options=evaluate.parse_options(FLAGS.detector_options),
        ckpt=FLAGS.ckpt, data_dir=FLAGS.data_dir, download=FLAGS.download, num_images=FLAGS.num_images,
        num_defense_per_class=FLAGS.num_defense_per_class, batch_size=FLAGS.batch_size,
        scales=scales, mode=FLAGS.mode, method=FLAGS.method,
        keep_all_poisoned=FLAGS.keep_all_poisoned, noise_copies=FLAGS.noise_copies,
        noise_std=FLAGS.noise_std, seed=FLAGS.seed, out=FLAGS.out, plot=FLAGS.plot,
        progress=FLAGS.progress)
    print(evaluate.format_summary(evaluate.evaluate_detection(opts)))


if __name__ == '__main__':
  app.run(main)
