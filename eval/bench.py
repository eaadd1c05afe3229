"""Benchmarks SCALE-UP detection: compiled JAX against PyTorch references.

  python -m eval.bench --quick --out /tmp/bench          # smoke run
  python -m eval.bench                                   # every section (see docs/performance.md)
  python -m eval.bench --sections throughput             # ResNet-20/18, batches 1, 32, 256 only
  python -m eval.bench --xla_compare                     # also time JAX without the XLA flag
  python -m eval.bench --dtype bfloat16                  # on accelerators

Sections: throughput (JAX and PyTorch detectors, torch.compile and bfloat16
autocast where --extra_at says), screen (the sequential screen against full
SPC on the zoo BadNets model), fig6 (time per image of every detector) and
train (JAX and PyTorch training images/s). Writes bench.json, bench.md,
bench.png and fig6.png into --out (default docs/results/bench).
"""

from scaleup_jax.xla_flags import set_default_xla_flags

set_default_xla_flags()

from absl import app, flags, logging  # noqa: E402

from scaleup_jax import cli  # noqa: E402

flags.DEFINE_list('models', ['resnet20', 'resnet18'], 'Model presets (resnet20, resnet18, resnet34, tiny).')
flags.DEFINE_list('batch_sizes', ['1', '32', '256'], 'Images per call (throughput section).')
flags.DEFINE_integer('repeats', 5, 'Measurements per method (every section).')
flags.DEFINE_float('min_seconds', 1.0, 'Minimum duration of one measurement (s).')
flags.DEFINE_string('out', 'docs/results/bench', 'Output directory for bench.json, bench.md, bench.png, fig6.png.')
flags.DEFINE_bool('quick', False, 'Tiny model, small batches, short repeats, random screen model.')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Computation dtype of both models.')
flags.DEFINE_bool('xla_compare', False, "Also time JAX without the project's XLA flags (in a subprocess).")
flags.DEFINE_list('frameworks', ['jax', 'torch'], 'Which sides to time.')
flags.DEFINE_list('scales', ['3', '5', '7', '9', '11'], 'Amplification factors, each >= 1.')
flags.DEFINE_integer('image_size', 32, 'Side of the square RGB input.')
flags.DEFINE_integer('num_classes', 10, 'Number of logits.')
flags.DEFINE_enum('torch_device', 'auto', ['auto', 'cpu', 'cuda'], 'Device of the PyTorch side.')
flags.DEFINE_integer('seed', 0, 'Seed of the random weights, images and detector keys.')
flags.DEFINE_integer('chunk', 32, 'Sub-batch size of the jax_chunked detector.')
flags.DEFINE_list('torch_extras', ['compile', 'bf16'], 'Optional PyTorch configurations (compile, bf16).')
flags.DEFINE_list('extra_at', ['resnet20:256'], "Where torch_extras run: model:batch entries, or 'all'.")
flags.DEFINE_list('sections', ['throughput', 'fig6', 'screen', 'train'], 'Sections to run.')
flags.DEFINE_list('fig6_batches', ['1', '256'], 'Batch sizes of the fig6 section.')
flags.DEFINE_list('fig6_detectors', None, 'Detectors of the fig6 section (default: all registered).')
flags.DEFINE_string('zoo_model', 'cifar10_badnets_resnet20',
                    "Model of the fig6 and screen sections: a zoo name or a run directory; '' for random weights.")
flags.DEFINE_string('zoo', None, 'Zoo directory (default: $SCALEUP_JAX_ZOO, ./zoo, the installed copy).')
flags.DEFINE_integer('screen_images', 1024, 'Benign and poisoned evaluation images of the screen section (each).')
flags.DEFINE_integer('screen_calibration', 1000, 'Benign calibration images of the screen threshold.')
flags.DEFINE_float('screen_alpha', 0.05, 'False-positive budget of the screen threshold (conformal).')
flags.DEFINE_integer('screen_batch', 256, 'Batch size of the screen section.')
flags.DEFINE_list('train_models', ['resnet20'], 'Models of the train section.')
flags.DEFINE_integer('train_batch', 128, 'Batch size of the train section.')
flags.DEFINE_string('repo', None, 'Directory whose git commit is recorded (default: the working directory).')
flags.DEFINE_list('skip', [], 'model:batch:method entries of the throughput section not to run.')
flags.DEFINE_integer('fig6_repeats', None, 'Measurements per detector in the fig6 section (default: --repeats).')
cli.define_shared_flags('data_dir', 'progress')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from scaleup_jax import bench
  with cli.friendly_errors():
    opts = cli.options_from_flags(
        bench.BenchOptions, scales=cli.numbers('scales', FLAGS.scales),
        batch_sizes=cli.numbers('batch_sizes', FLAGS.batch_sizes, int),
        fig6_batches=cli.numbers('fig6_batches', FLAGS.fig6_batches, int))
    result = bench.run_bench(opts)
    print(bench.to_markdown(result))
    print(f'wrote bench.json, bench.md, bench.png, fig6.png to {opts.out}')


if __name__ == '__main__':
  app.run(main)
