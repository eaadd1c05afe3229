"""SCALE-UP's failure map: trigger pattern x target class, with the measured reason (issue #19).

  python -m eval.failure_map                      # every finished zoo/failure_map/* run + zoo BadNets
  python -m eval.failure_map --models zoo/failure_map/white_t0,zoo/sweeps/badnets_rate0.1_size5
  python -m eval.failure_map --models zoo/failure_map/black_t3 --merge   # add one model
  python -m eval.failure_map --num_images 500 --out /tmp/fm              # a small run

Default models: every run directory under zoo/failure_map/ that finished
training (has metrics.json; unfinished ones are skipped with a warning), the
map's random_t0 cell zoo/sweeps/badnets_rate0.1_size5, and the zoo BadNets
models zoo/cifar10_badnets_resnet20 and zoo/v2/cifar10_badnets_resnet20.

Writes failure_map.json (after every model), failure_map.md, heatmap.png and
mechanism.png to --out (default docs/results/failure_map); --doc also writes
the report there (e.g. docs/failure_map.md), keeping its hand-written section.
"""

from scaleup_jax.xla_flags import set_default_xla_flags

set_default_xla_flags()

import argparse  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402

from scaleup_jax import cli  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m eval.failure_map', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--models', default=None,
                      help='comma-separated run directories (default: every finished '
                           'zoo/failure_map/* run, zoo/sweeps/badnets_rate0.1_size5 and the zoo '
                           'BadNets models)')
  parser.add_argument('--out', default='docs/results/failure_map',
                      help='output directory (default: %(default)s)')
  parser.add_argument('--doc', default=None,
                      help='also write the report to this markdown file (e.g. docs/failure_map.md)')
  parser.add_argument('--merge', action='store_true',
                      help='keep the models already in --out that this run does not evaluate')
  parser.add_argument('--num_images', type=int, default=2000,
                      help='evaluation images per model, 0 = all (default: %(default)s)')
  parser.add_argument('--num_defense_per_class', type=int, default=100,
                      help='defender images per class (default: %(default)s)')
  parser.add_argument('--seed', type=int, default=0, help='split and tie-coin seed')
  cli.add_shared_arguments(parser, 'batch_size', 'progress')
  args = parser.parse_args(argv)
  from scaleup_jax.failure_map import experiment
  with cli.friendly_errors():
    if args.models:
      requested = [m.strip() for m in args.models.split(',') if m.strip()]
      models, unfinished = experiment.check_models(requested)
    else:
      models, unfinished = experiment.default_models()
    for m in unfinished:
      print(f'warning: skipping {m}: training has not finished (no metrics.json)', file=sys.stderr)
    if not models:
      raise experiment.InputError('no finished model to evaluate'
                                  + (f" (unfinished: {', '.join(unfinished)})" if unfinished else ''))
    config = cli.options_from_flags(experiment.FailureMapConfig, args)
    command = 'python -m eval.failure_map ' + shlex.join(argv if argv is not None else sys.argv[1:])
    results = experiment.run(models, args.out, config, merge=args.merge,
                             progress=args.progress, command=command.strip(), doc=args.doc)
  print(f"wrote {args.out}/failure_map.json, failure_map.md, heatmap.png and mechanism.png "
        f"({len(results['models'])} models, {results['runtime_s']:.0f} s)"
        + (f'; {args.doc}' if args.doc else ''))
  return 0


if __name__ == '__main__':
  sys.exit(main())
