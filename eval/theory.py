"""Kernel-regression toy of SCALE-UP's Theorem 1: where it holds, where it fails.

  python -m eval.theory                      # full sweep -> docs/results/theory
  python -m eval.theory --quick --out /tmp/t # tiny setting (tests)

Writes theory.json and PNG figures to --out; see docs/theory.md.
"""

from scaleup_jax.xla_flags import set_default_xla_flags

set_default_xla_flags()

import argparse  # noqa: E402
import sys  # noqa: E402

from scaleup_jax import cli  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m eval.theory', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', default='docs/results/theory', help='output directory (default: %(default)s)')
  parser.add_argument('--seed', type=int, default=0, help='PRNG seed for data, triggers and the MLP')
  parser.add_argument('--quick', action='store_true', help='tiny setting for tests (seconds)')
  cli.add_shared_arguments(parser, 'progress')
  args = parser.parse_args(argv)
  from scaleup_jax.theory import experiment
  with cli.friendly_errors():
    results = experiment.run_theory(args.out, seed=args.seed, quick=args.quick, progress=args.progress)
  print(f"wrote {args.out}/theory.json and {len(results['figures'])} figures in {results['runtime_s']:.1f} s")
  return 0


if __name__ == '__main__':
  sys.exit(main())
