"""TPR at calibrated false-positive budgets for every label-only SCALE-UP score.

  python -m eval.operating_points                          # target-0 zoo models (+ zoo v2 if trained)
  python -m eval.operating_points --models v2/cifar10_badnets_resnet20 --merge
  python -m eval.operating_points --quick --out /tmp/op    # tiny setting (tests)

Writes operating_points.json, operating_points.md and tpr_vs_budget.png to
--out (default docs/results/operating_points); see docs/method.md.
"""

from scaleup_jax.xla_flags import set_default_xla_flags

set_default_xla_flags()

import argparse  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402

from scaleup_jax import cli  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m eval.operating_points', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', default='docs/results/operating_points',
                      help='output directory (default: %(default)s)')
  parser.add_argument('--models', default=None,
                      help='comma-separated zoo names or run directories (default: the target-0 '
                           'BadNets, WaNet, PhysicalBA, ISSBA models, plus zoo v2 BadNets once trained)')
  parser.add_argument('--zoo', default=None, help='zoo directory (default: ./zoo or $SCALEUP_JAX_ZOO)')
  parser.add_argument('--num_images', type=int, default=2000,
                      help='evaluation images per model, 0 = all (default: %(default)s)')
  parser.add_argument('--num_defense_per_class', type=int, default=100,
                      help='defender (calibration) images per class (default: %(default)s)')
  parser.add_argument('--rule', default='conformal', help='calibration rule: conformal or plugin')
  parser.add_argument('--seed', type=int, default=0, help='split and tie-coin seed')
  cli.add_shared_arguments(parser, 'batch_size', 'progress')
  parser.add_argument('--merge', action='store_true',
                      help='keep the models already in --out that this run does not evaluate')
  parser.add_argument('--quick', action='store_true', help='tiny setting for tests (one model, 100 images)')
  args = parser.parse_args(argv)
  from scaleup_jax.operating_points import experiment
  with cli.friendly_errors():
    models = (tuple(m.strip() for m in args.models.split(',') if m.strip()) if args.models
              else experiment.default_models(args.zoo))
    if args.quick:
      models, args.num_images, args.num_defense_per_class = models[:1], 100, 12
    config = cli.options_from_flags(experiment.OperatingPointsConfig, args, models=models)
    command = 'python -m eval.operating_points ' + shlex.join(argv if argv is not None else sys.argv[1:])
    results = experiment.run_operating_points(args.out, config, zoo=args.zoo, merge=args.merge,
                                              progress=args.progress, command=command.strip())
  print(f"wrote {args.out}/operating_points.json, operating_points.md and tpr_vs_budget.png "
        f"({len(results['models'])} models, {results['runtime_s']:.0f} s)")
  return 0


if __name__ == '__main__':
  sys.exit(main())
