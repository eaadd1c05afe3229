"""Shared helpers for the command-line entry points."""

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
