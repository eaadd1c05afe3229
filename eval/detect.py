"""Flags backdoor-poisoned test images of a trained model with SCALE-UP (or a baseline).

  python -m eval.detect                       # the zoo BadNets ResNet-20
  python -m eval.detect --ckpt zoo/cifar10_badnets_resnet20 --num_images 2000
  python -m eval.detect --mode data-free --scales 3,5,7,9,11 --out results.json
  python -m eval.detect --detector strip --detector_options num_overlays=50

  python -m eval.detect --dense_scales 2,3,4,5,6,7,8,9,10,11,12 --save_detectors dets/

Prints BA, ASR, AUROC per mode and, for every label-only score and each
false-positive budget (--alphas, default 1%, 5%, 10%), the threshold
calibrated on the defender's images, the realised FPR on the held-out
evaluation images and the TPR, each with its exact binomial interval, with a
legend and a one-line reading wherever a rate is 0 or a budget is unmet; writes
the same as JSON (plus a PNG of the scores and ROC).
"""

from scaleup_jax.xla_flags import set_default_xla_flags

set_default_xla_flags()

from absl import app, flags, logging  # noqa: E402

from scaleup_jax import cli  # noqa: E402

flags.DEFINE_string('ckpt', None, 'Run directory of a trained model (default: zoo BadNets ResNet-20).')
cli.define_shared_flags('data_dir', 'download', 'batch_size', 'progress', 'protocol', 'jpeg_match')
flags.DEFINE_integer('backdoor', 0, 'Which backdoor of a model with several (paper App. H): 0 the main one, i >= 1 its extra backdoor i (extra_backdoors.npz).')
flags.DEFINE_integer('num_images', 0, 'Evaluation images taken from the test set (0 = all not held by the defender).')
flags.DEFINE_integer('num_defense_per_class', 100, 'Benign defender images per class: the data-limited '
                     'statistics and the calibration of every threshold (disjoint from the evaluation images).')
flags.DEFINE_list('scales', ['3', '5', '7', '9', '11'], 'Amplification factors, each >= 1.')
flags.DEFINE_string('mode', 'both', 'data-free, data-limited or both.')
flags.DEFINE_string('method', 'auto', "How scales are batched: 'vmap' (one batch), 'map' "
                    "(sequential) or 'auto' (map on CPU from batch 32, as measured by eval.bench; "
                    "vmap otherwise).")
flags.DEFINE_string('detector', 'scaleup', 'Detector: scaleup, strip, shrinkpad, deepsweep, frequency, ibd_psc or teco.')
flags.DEFINE_list('detector_options', [], 'Detector options as key=value (numbers parsed), e.g. num_overlays=50 for strip; each detector validates its own (SCALE-UP: scales, dense_scales, method, data_limited_form, group_by, also set by their own flags).')
flags.DEFINE_bool('keep_all_poisoned', False, 'Score every poisoned image, not only those the attack fooled.')
flags.DEFINE_integer('noise_copies', 0, 'Add this many noisy copies of every benign and poisoned image.')
flags.DEFINE_enum('noise_kind', 'uniform', ['uniform', 'gaussian'],
                  "That noise: 'uniform' adds m*U[0,1) (the official code's), 'gaussian' m*N(0,1).")
flags.DEFINE_float('noise_magnitude', 0.02, 'm of that noise (pixels in [0, 1]).')
flags.DEFINE_string('data_limited_form', 'standardised', 'Data-limited score: standardised, '
                    'literal, balanced, centred or scaled (scaleup.data_limited_scores).')
flags.DEFINE_enum('group_by', 'predicted', ['predicted', 'true'],
                  "Group the defender images' statistics by their predicted or true class.")
flags.DEFINE_list('alphas', ['0.01', '0.05', '0.1'], 'False-positive budgets of the calibrated '
                  'operating points (empty: none).')
flags.DEFINE_enum('calibration_rule', 'conformal', ['conformal', 'plugin'],
                  "Threshold rule: 'conformal' (E[FPR] <= alpha for exchangeable benign images) or "
                  "'plugin' (exact alpha on the calibration images, no guarantee).")
flags.DEFINE_list('dense_scales', [], 'A denser scale grid for the finer label-only scores, e.g. '
                  '2,3,...,12 (costs 1 + |grid| forward passes per image; empty: none).')
flags.DEFINE_string('save_detectors', None, 'Directory to save one calibrated detector (JSON) per '
                    'score and budget; load with scaleup_jax.calibration.load_detector.')
flags.DEFINE_integer('seed', 0, 'Seed of the defender/evaluation split, the noise and the tie coins.')
flags.DEFINE_string('out', None, 'JSON output path (default runs/detect/<ckpt name>/detect.json).')
flags.DEFINE_bool('plot', True, 'Also write a PNG of the score distributions and ROC curves.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from scaleup_jax import evaluate
  with cli.friendly_errors():
    opts = cli.options_from_flags(
        evaluate.DetectOptions, detector_options=evaluate.parse_options(FLAGS.detector_options),
        scales=cli.numbers('scales', FLAGS.scales), alphas=cli.numbers('alphas', FLAGS.alphas),
        dense_scales=cli.numbers('dense_scales', FLAGS.dense_scales))
    print(evaluate.format_summary(evaluate.evaluate_detection(opts)))


if __name__ == '__main__':
  app.run(main)
