"""Reproduces the SCALE-UP paper's evaluation at CPU scale on existing models (no training).

  python -m eval.reproduce                                   # everything, zoo models
  python -m eval.reproduce --only table1,fig2 --num_images 500
  python -m eval.reproduce --quick --ckpt runs/x --clean_ckpt runs/y --out /tmp/r   # seconds
  python -m eval.reproduce --only adaptive --adaptive_ckpt zoo/cifar10_adaptive_resnet20

Experiments: table1, fig2, fig3, roc, ablation_scales, ablation_defense_size,
ablation_noise, poison_rate (--rate_ckpts), trigger_size (--size_ckpts), multi_label
(--multi_label_ckpts), multi_trigger (--multi_trigger_ckpts), adaptive (--adaptive_ckpt), robustness (--robustness_ckpts); those whose models are missing are reported as skipped.
Writes reproduce.json, summary.md and one .md table and .png figure per
experiment under --out.
"""

from scaleup_jax.xla_flags import set_default_xla_flags

set_default_xla_flags()

from absl import app, flags, logging  # noqa: E402

from scaleup_jax import cli  # noqa: E402

flags.DEFINE_string('ckpt', None, 'Attacked model of the single-model experiments (default: zoo BadNets).')
flags.DEFINE_string('clean_ckpt', None, 'Clean model of fig2 (default: zoo clean ResNet-20).')
flags.DEFINE_list('ckpts', [], 'Attacked models of table1/roc (default: --ckpt if given, else every attacked zoo model).')
flags.DEFINE_list('only', [], 'Experiments to run (default: all).')
flags.DEFINE_bool('quick', False, 'Tiny image counts and scaleup-only table1 (for tests).')
flags.DEFINE_integer('num_images', None, 'Evaluation images per model before poisoning (default 1000; quick 48).')
flags.DEFINE_integer('num_defense_per_class', None, 'Defender images per class (default 100; quick 5).')
flags.DEFINE_integer('batch_size', None, 'Images per compiled call (default 256; quick 32).')
flags.DEFINE_list('detectors', None, 'Detectors of table1 (default: all; quick: scaleup).')
flags.DEFINE_string('compare_dir', None, 'table1: eval.compare directory to extend (models already there are reused; default --out/table1).')
flags.DEFINE_integer('num_bootstrap', None, 'Bootstrap resamples of the AUROC intervals (default 1000; quick 200).')
flags.DEFINE_list('defense_sizes', None, 'ablation_defense_size: benign images per class (default 1,5,10,20,50,100).')
flags.DEFINE_list('noise_stds', None, 'ablation_noise: Gaussian noise stds (default 0.01,0.03,0.05,0.1,0.2,0.3).')
flags.DEFINE_list('rate_ckpts', [], 'poison_rate: attacked models trained at several poisoning rates.')
flags.DEFINE_list('size_ckpts', [], 'trigger_size: attacked models trained with several trigger sizes.')
flags.DEFINE_list('multi_label_ckpts', [], 'multi_label: models with several infected labels (default: zoo/sweeps/multi_label_k*).')
flags.DEFINE_list('multi_trigger_ckpts', [], 'multi_trigger: models with several triggers for one label (default: zoo/sweeps/multi_label_k1 and multi_trigger_k*).')
flags.DEFINE_string('adaptive_ckpt', None, 'adaptive: a model trained with the adaptive attack.')
flags.DEFINE_list('robustness_ckpts', [], 'robustness: models to test on noisy inputs (default: the BadNets and PhysicalBA models of --ckpts).')
flags.DEFINE_list('robustness_stds', None, 'robustness: Gaussian noise stds on the inputs (default 0,0.005,0.01,0.02,0.03,0.05,0.1).')
flags.DEFINE_integer('seed', 0, 'Seed of the split, bootstrap, draws and noise.')
flags.DEFINE_string('out', 'docs/results/reproduce', 'Output directory.')
cli.define_shared_flags('data_dir', 'progress', 'protocol', 'jpeg_match')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from scaleup_jax import reproduce
  with cli.friendly_errors():
    opts = cli.options_from_flags(
        reproduce.ReproduceOptions, command=cli.command_line('eval.reproduce'),
        defense_sizes=cli.numbers('defense_sizes', FLAGS.defense_sizes, int),
        noise_stds=cli.numbers('noise_stds', FLAGS.noise_stds, float),
        robustness_stds=cli.numbers('robustness_stds', FLAGS.robustness_stds, float))
    summary = reproduce.reproduce(opts)
    for name, r in summary['experiments'].items():
      status = f"ok ({r['seconds']:.0f} s)" if r['status'] == 'ok' else f"skipped: {r['reason']}"
      print(f'{name:<24}{status}')
    print(f"wrote {summary['out']}/reproduce.json, summary.md and the tables and figures")


if __name__ == '__main__':
  app.run(main)
