"""Every notebook under notebooks/ runs top to bottom on small settings."""

import os
from pathlib import Path

import pytest

from conftest import ROOT, requires_cifar

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

NOTEBOOKS = sorted((ROOT / 'notebooks').glob('*.ipynb'))
SMALL = {'TOUR_N_IMAGES': '64', 'THEORY_QUICK': '1'}


@requires_cifar
@pytest.mark.slow
@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path, monkeypatch):
  for k, v in SMALL.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setenv('PYTHONPATH', str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',
                                   resources={'metadata': {'path': str(path.parent)}})
  client.execute()
  errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
            if o.get('output_type') == 'error']
  assert not errors
