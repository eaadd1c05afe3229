"""serve.testing.ServerProcess: the one start-up wait of the server tests (kill, Ray, zoo)."""

import signal
import sys

import numpy as np
import pytest

from scaleup_jax.serve import testing


def _python(code: str) -> list[str]:
  return [sys.executable, '-c', code]


def test_returns_at_the_serving_line_with_its_url_and_the_log():
  srv = testing.ServerProcess(_python(
      "import time; print('loading'); print('serving on http://127.0.0.1:5/ (tiny)'); "
      "time.sleep(60)"), timeout_s=60)
  try:
    assert srv.url == 'http://127.0.0.1:5/'
    assert srv.log == ['loading\n', 'serving on http://127.0.0.1:5/ (tiny)\n']
  finally:
    srv.stop(10)
  assert srv.proc.returncode == -signal.SIGINT or srv.proc.returncode == 1  # SIGINT: clean stop


def test_a_server_that_exits_first_is_an_error_with_its_output():
  with pytest.raises(RuntimeError, match=r'server exited \(code 3\): .*port in use'):
    testing.ServerProcess(_python("import sys; print('port in use'); sys.exit(3)"), timeout_s=60)


def test_a_server_that_never_starts_is_killed_at_the_timeout():
  with pytest.raises(RuntimeError, match='did not start within 1 s: .*still loading'):
    testing.ServerProcess(_python("import time; print('still loading'); time.sleep(600)"),
                          timeout_s=1)


def test_stdin_servers_stop_when_stdin_closes():
  srv = testing.ServerProcess(_python(
      "import sys; print('serving on http://h:1'); sys.stdin.read(); print('bye')"),
      timeout_s=60, stdin=True)
  srv.stop(30)
  assert srv.proc.returncode == 0


def test_npy_bytes_round_trip():
  import io
  a = testing.random_images(3)
  np.testing.assert_array_equal(np.load(io.BytesIO(testing.npy_bytes(a))), a)
