"""Shared helpers for the command-line entry points: user errors, shared flags, list flags."""

from __future__ import annotations

import contextlib
import sys

from scaleup_jax.checkpoint import CheckpointError
from scaleup_jax.data import DatasetNotFoundError
from scaleup_jax.integrity import IntegrityError
from scaleup_jax.paths import ZooNotFoundError
from scaleup_jax.validation import InputError


# The deliberate user errors: a bad flag, file, shape or name, a damaged or missing run, file,
# dataset or zoo. Any other exception is a bug and keeps its traceback.
USER_ERRORS = (InputError, CheckpointError, IntegrityError, DatasetNotFoundError, ZooNotFoundError)


@contextlib.contextmanager
def friendly_errors():
  """Turns the user errors of :data:`USER_ERRORS` into a one-line message and exit code 2.

  Only those: a plain ``ValueError`` (or any other exception) raised inside is
  an internal bug and propagates with its traceback.

  Example:
    >>> with friendly_errors():
    ...   raise InputError('--scales must be numbers')   # doctest: +SKIP
    error: --scales must be numbers                     (on stderr; exit code 2)
  """
  try:
    yield
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def numbers(name: str, values, cast=float) -> tuple | None:
  """A list flag's values as a tuple of ``cast`` (None stays None); InputError naming ``--name``.

  Example:
    >>> numbers('scales', ['3', '5'])
    (3.0, 5.0)
  """
  if values is None:
    return None
  try:
    return tuple(cast(v) for v in values)
  except ValueError:
    raise InputError(f'--{name} must be numbers; got {list(values)}') from None


# Flags that several absl entry points (eval.detect, compare, diagnose, protocol, reproduce, serve)
# take with the same meaning: {name: (kind, default, help)}; defined by define_shared_flags.
SHARED_FLAGS = {
    'data_dir': ('string', None, 'tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).'),
    'download': ('bool', None, 'Download and prepare CIFAR-10 if it is absent (the default, unless '
                 '$SCALEUP_JAX_NO_DOWNLOAD=1); --nodownload forbids it.'),
    'batch_size': ('integer', 256, 'Images per compiled call.'),
    'progress': ('bool', True, 'Show progress bars.'),
    'protocol': ('string', None, "'paper': the paper's evaluation sets (Sec. 5.1): one uniform "
                 "noisy copy (0.02 U[0,1), the official code's) of every benign and successfully "
                 "attacked image, 100 defender images per class; 'paper_tiny_imagenet': the same "
                 'with 20 defender images per class (its test split has 50).'),
    'jpeg_match': ('bool', False, 'Re-encode the poisoned test images as JPEG (quality 75, '
                   '4:2:0), like the offline CIFAR-10 copy.'),
}


def define_shared_flags(*names: str, flag_values=None) -> None:
  """Defines the :data:`SHARED_FLAGS` ``names`` as absl flags, one definition and help text each.

  Args:
    *names: keys of :data:`SHARED_FLAGS`, in the order ``--help`` lists them.
    flag_values: the ``absl.flags.FlagValues`` to define them in (default ``flags.FLAGS``).

  Raises:
    KeyError: a name that is not a shared flag (a bug of the entry point).

  Example:
    >>> from absl import flags
    >>> define_shared_flags('data_dir', 'progress')          # doctest: +SKIP
    >>> flags.FLAGS.progress                                 # doctest: +SKIP
    True
  """
  from absl import flags
  # The flags belong to the entry point that asks for them (its --helpshort lists them), not
  # to this module: absl attributes a DEFINE to the first calling module not disclaimed.
  flags.disclaim_key_flags()
  fv = flags.FLAGS if flag_values is None else flag_values
  define = {'string': flags.DEFINE_string, 'bool': flags.DEFINE_bool,
            'integer': flags.DEFINE_integer}
  for name in names:
    kind, default, help_text = SHARED_FLAGS[name]
    define[kind](name, default, help_text, flag_values=fv)


def command_line(module: str, argv=None) -> str:
  """The command that ran, as recorded in outputs: ``python -m <module> <args>``.

  Example:
    >>> command_line('eval.compare', ['prog', '--seed', '1'])
    'python -m eval.compare --seed 1'
  """
  args = (sys.argv if argv is None else argv)[1:]
  return ' '.join(['python -m ' + module, *args])


def options_from_flags(cls, flag_values=None, **values):
  """An options dataclass filled from the flags of the same names; ``values`` win.

  Serves the absl entry points (``flag_values`` a parsed ``FlagValues``) and the
  argparse ones (an ``argparse.Namespace``) alike.

  Each field of ``cls`` takes, in this order: the keyword given here (a value
  the entry point converted, e.g. ``scales=numbers('scales', FLAGS.scales)``),
  the parsed flag of the same name that the calling module defined (a list
  flag as a tuple), or the field's default. So an option is written twice: its
  flag and its field.

  Args:
    cls: a dataclass type, e.g. ``evaluate.DetectOptions``.
    flag_values: parsed ``absl.flags.FlagValues`` (default ``flags.FLAGS``) or an
      ``argparse.Namespace``.
    **values: fields set explicitly; each must be a field of ``cls``.

  Returns:
    A ``cls`` instance.

  Raises:
    TypeError: a keyword that is not a field of ``cls`` (a bug of the entry point).

  Example:
    >>> opts = options_from_flags(evaluate.DetectOptions,                  # doctest: +SKIP
    ...                           scales=numbers('scales', FLAGS.scales))
  """
  import argparse
  import dataclasses
  from absl import flags
  fv = flags.FLAGS if flag_values is None else flag_values
  if isinstance(fv, argparse.Namespace):
    parsed = vars(fv)
  else:
    # Only the caller's own flags (those it defined, the shared ones included): absl's FLAGS
    # also holds every other imported entry point's, and a same-named one of another module
    # (eval.detect's --noise_copies default 0 for reproduce's None) must not leak in.
    caller = sys.modules[sys._getframe(1).f_globals['__name__']]
    parsed = {f.name: f.value for f in fv.get_key_flags_for_module(caller)}
  names = {f.name for f in dataclasses.fields(cls) if f.init}
  unknown = sorted(set(values) - names)
  if unknown:
    raise TypeError(f'{cls.__name__} has no field(s) {unknown}')
  kwargs = {}
  for name in names:
    if name in values:
      kwargs[name] = values[name]
    elif name in parsed:
      value = parsed[name]
      kwargs[name] = tuple(value) if isinstance(value, list) else value
  return cls(**kwargs)


def add_shared_arguments(parser, *names: str) -> None:
  """The :data:`SHARED_FLAGS` ``names`` as arguments of an argparse entry point.

  The same names, defaults and help as :func:`define_shared_flags`; a boolean
  flag takes ``--name`` / ``--no-name``.

  Args:
    parser: an ``argparse.ArgumentParser``.
    *names: keys of :data:`SHARED_FLAGS`, in the order ``--help`` lists them.

  Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_shared_arguments(parser, 'batch_size', 'progress')
    >>> args = parser.parse_args(['--no-progress'])
    >>> (args.batch_size, args.progress)
    (256, False)
  """
  import argparse
  for name in names:
    kind, default, help_text = SHARED_FLAGS[name]
    if kind == 'bool':
      parser.add_argument(f'--{name}', action=argparse.BooleanOptionalAction, default=default,
                          help=help_text)
    else:
      parser.add_argument(f'--{name}', type={'string': str, 'integer': int}[kind],
                          default=default, help=help_text)
