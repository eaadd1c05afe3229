"""scaleup_jax.cli: user errors are one line with exit code 2; internal errors keep their traceback."""

import dataclasses
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import ROOT
from scaleup_jax import attacks, batching, cli, models, poison
from scaleup_jax.checkpoint import CheckpointError
from scaleup_jax.data import DatasetNotFoundError
from scaleup_jax.integrity import IntegrityError
from scaleup_jax.paths import ZooNotFoundError
from scaleup_jax.validation import InputError


@pytest.mark.parametrize('error', [InputError, CheckpointError, IntegrityError,
                                   DatasetNotFoundError, ZooNotFoundError])
def test_user_error_is_one_line_and_exit_code_2(error, capsys):
  with pytest.raises(SystemExit) as e:
    with cli.friendly_errors():
      raise error('--scales must be numbers; got [x]')
  assert e.value.code == 2
  assert capsys.readouterr().err == 'error: --scales must be numbers; got [x]\n'


@pytest.mark.parametrize('error', [ValueError, KeyError, TypeError, ZeroDivisionError])
def test_internal_error_propagates_unchanged(error):
  with pytest.raises(error, match='internal'):
    with cli.friendly_errors():
      raise error('internal')


def _run(body: str) -> subprocess.CompletedProcess:
  code = 'from scaleup_jax import cli\nfrom scaleup_jax.validation import InputError\n' + \
      'with cli.friendly_errors():\n' + textwrap.indent(textwrap.dedent(body), '  ')
  # Importing jax and orbax can take minutes on a loaded machine.
  return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)


def test_entry_point_shows_the_traceback_of_an_internal_value_error():
  r = _run("raise ValueError('an invariant broke')")
  assert r.returncode == 1
  assert 'Traceback (most recent call last)' in r.stderr
  assert 'ValueError: an invariant broke' in r.stderr and 'error: ' not in r.stderr


def test_entry_point_prints_an_input_error_in_one_line():
  r = _run("raise InputError('unknown detector ' + repr('strap'))")
  assert r.returncode == 2
  assert r.stderr == "error: unknown detector 'strap'\n"


@pytest.mark.parametrize('call, match', [
    (lambda: models.get_model('resnet50'), "unknown model 'resnet50'"),
    (lambda: attacks.check_attack_name('nope'), "unknown attack 'nope'"),
    (lambda: poison.blended_trigger(jax.random.key(0), alpha=2.0), 'alpha must be in'),
    (lambda: batching.map_batches(lambda x: x, np.zeros((0, 2)), 4), 'no images'),
])
def test_user_facing_library_errors_are_input_errors(call, match):
  with pytest.raises(InputError, match=match):
    call()


def test_internal_assertions_stay_plain_value_errors():
  """A bug in the code (not the user's input) is not dressed up as a user error."""
  with pytest.raises(ValueError) as e:
    batching.pad_to(np.zeros((5, 2)), 3)
  assert type(e.value) is ValueError


def test_shared_flags_are_defined_once_with_their_defaults_and_belong_to_the_caller():
  from absl import flags
  fv = flags.FlagValues()
  cli.define_shared_flags('data_dir', 'download', 'batch_size', 'progress', flag_values=fv)
  fv(['prog', '--batch_size', '8', '--noprogress'])
  assert (fv.data_dir, fv.download, fv.batch_size, fv.progress) == (None, None, 8, False)
  key = {f.name for f in fv.get_key_flags_for_module(sys.modules[__name__])}
  assert key == {'data_dir', 'download', 'batch_size', 'progress'}  # listed by --helpshort
  with pytest.raises(KeyError):
    cli.define_shared_flags('seeds', flag_values=fv)


def test_every_absl_entry_point_takes_the_shared_flags_it_used_to_define():
  wanted = {'detect': {'data_dir', 'download', 'batch_size', 'progress'},
            'compare': {'data_dir', 'batch_size', 'progress'},
            'diagnose': {'data_dir', 'download', 'batch_size', 'progress'},
            'protocol': {'data_dir'}, 'reproduce': {'data_dir', 'progress'},
            'serve': {'data_dir', 'download'}, 'bench': {'data_dir', 'progress'}}
  for name, shared in wanted.items():
    src = (ROOT / 'eval' / f'{name}.py').read_text()
    assert 'cli.define_shared_flags(' in src, name
    for flag in shared:
      assert f"DEFINE_string('{flag}'" not in src and f"DEFINE_bool('{flag}'" not in src, (name, flag)
      assert f"'{flag}'" in src.split('cli.define_shared_flags(')[1].split(')')[0], (name, flag)


def test_every_argparse_entry_point_takes_the_shared_arguments():
  wanted = {'failure_map': {'batch_size', 'progress'}, 'operating_points': {'batch_size', 'progress'},
            'theory': {'progress'}}
  for name, shared in wanted.items():
    src = (ROOT / 'eval' / f'{name}.py').read_text()
    for flag in shared:
      assert f"add_argument('--{flag}'" not in src and "'--no-progress'" not in src, (name, flag)
      assert f"'{flag}'" in src.split('cli.add_shared_arguments(')[1].split(')')[0], (name, flag)


def test_shared_arguments_match_the_shared_flags():
  import argparse
  parser = argparse.ArgumentParser()
  cli.add_shared_arguments(parser, 'data_dir', 'batch_size', 'progress')
  args = parser.parse_args([])
  assert (args.data_dir, args.batch_size, args.progress) == (None, 256, True)
  args = parser.parse_args(['--batch_size', '8', '--no-progress', '--data_dir', '/d'])
  assert (args.data_dir, args.batch_size, args.progress) == ('/d', 8, False)
  with pytest.raises(SystemExit):
    parser.parse_args(['--batch_size', 'eight'])


@dataclasses.dataclass(frozen=True)
class _Options:
  ckpt: str | None = None
  scales: tuple = (3.0, 5.0)
  names: tuple = ()
  seed: int = 0


@pytest.mark.parametrize('kind', ['absl', 'argparse'])
def test_options_from_flags_takes_same_named_flags_and_explicit_values_win(kind):
  if kind == 'absl':
    from absl import flags
    fv = flags.FlagValues()
    flags.DEFINE_string('ckpt', None, '', flag_values=fv)
    flags.DEFINE_list('names', [], '', flag_values=fv)
    flags.DEFINE_list('scales', None, '', flag_values=fv)
    flags.DEFINE_integer('other', 1, '', flag_values=fv)   # not a field: ignored
    flags.DEFINE_integer('seed', 7, '', flag_values=fv, module_name='eval.another_entry_point')
    fv(['prog', '--ckpt', 'runs/a', '--names', 'x,y', '--scales', '3,9'])
  else:
    import argparse
    fv = argparse.Namespace(ckpt='runs/a', names=['x', 'y'], scales=['3', '9'], other=1)
  opts = cli.options_from_flags(_Options, fv, scales=cli.numbers('scales', ['3', '9']))
  # a list flag arrives as a tuple; a field with no flag of this module keeps its default (seed:
  # another module's --seed does not leak in)
  assert opts == _Options(ckpt='runs/a', scales=(3.0, 9.0), names=('x', 'y'), seed=0)
  with pytest.raises(TypeError, match="no field"):
    cli.options_from_flags(_Options, fv, scale=(1.0,))


def test_command_line_records_the_module_and_its_arguments():
  assert cli.command_line('eval.detect', ['x', '--ckpt', 'runs/a']) == 'python -m eval.detect --ckpt runs/a'
  assert cli.command_line('eval.detect', ['x']) == 'python -m eval.detect'
