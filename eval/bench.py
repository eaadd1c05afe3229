"""Benchmarks SCALE-UP detection: compiled JAX against PyTorch references.

  python -m eval.bench --quick --out /tmp/bench          # smoke run, well under a minute
  python -m eval.bench                                   # ResNet-20/18, batches 1, 32, 256
  python -m eval.bench --xla_compare                     # also time JAX without the XLA flag
  python -m eval.bench --dtype bfloat16                  # on accelerators

Writes bench.json, bench.md and bench.png into --out (default
docs/results/bench). See docs/performance.md for what is measured and how.
"""

from scaleup_jax.xla_flags import set_default_xla_flags

set_default_xla_flags()

from absl import app, flags, logging  # noqa: E402

from scaleup_jax import cli  # noqa: E402

flags.DEFINE_list('models', ['resnet20', 'resnet18'], 'Model presets (resnet20, resnet18, resnet34, tiny).')
flags.DEFINE_list('batch_sizes', ['1', '32', '256'], 'Images per call.')
flags.DEFINE_integer('repeats', 5, 'Measurements per model, batch size and method.')
flags.DEFINE_float('min_seconds', 1.0, 'Minimum duration of one measurement (s).')
flags.DEFINE_string('out', 'docs/results/bench', 'Output directory for bench.json, bench.md, bench.png.')
flags.DEFINE_bool('quick', False, 'Tiny model, batches 1 and 8, 2 short repeats (overrides the above).')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Computation dtype of both models.')
flags.DEFINE_bool('xla_compare', False, "Also time JAX without the project's XLA flags (in a subprocess).")
flags.DEFINE_list('frameworks', ['jax', 'torch'], 'Which sides to time.')
flags.DEFINE_list('scales', ['3', '5', '7', '9', '11'], 'Amplification factors, each >= 1.')
flags.DEFINE_integer('image_size', 32, 'Side of the square RGB input.')
flags.DEFINE_integer('num_classes', 10, 'Number of logits.')
flags.DEFINE_enum('torch_device', 'auto', ['auto', 'cpu', 'cuda'], 'Device of the PyTorch side.')
flags.DEFINE_integer('seed', 0, 'Seed of the random weights and images.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from scaleup_jax import bench
  with cli.friendly_errors():
    try:
      batch_sizes = [int(b) for b in FLAGS.batch_sizes]
      scales = [float(s) for s in FLAGS.scales]
    except ValueError:
      raise ValueError(f'--batch_sizes must be integers and --scales numbers; got '
                       f'{FLAGS.batch_sizes} and {FLAGS.scales}') from None
    opts = bench.BenchOptions(
        models=FLAGS.models, batch_sizes=batch_sizes, repeats=FLAGS.repeats,
        min_seconds=FLAGS.min_seconds, out=FLAGS.out, quick=FLAGS.quick, dtype=FLAGS.dtype,
        xla_compare=FLAGS.xla_compare, frameworks=FLAGS.frameworks, scales=scales,
        image_size=FLAGS.image_size, num_classes=FLAGS.num_classes,
        torch_device=FLAGS.torch_device, seed=FLAGS.seed, progress=FLAGS.progress)
    result = bench.run_bench(opts)
    print(bench.to_markdown(result))
    print(f'wrote bench.json, bench.md, bench.png to {opts.out}')


if __name__ == '__main__':
  app.run(main)
