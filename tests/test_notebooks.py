"""The ablation notebooks: both execute headless in smoke mode, and the committed ones hold a full run.

Smoke mode is injected papermill-style: a cell after the one tagged 'parameters' sets MODE, RUNS_ROOT
and DATA_DIR (temp dirs). The executed copies are written to the temp dir; the committed files are only
read. The notebooks run in order with one RUNS_ROOT, so the architecture notebook reuses the
activation notebook's baseline run, as in full mode.
"""
import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            'notebooks')
NOTEBOOKS = ('activation_ablation.ipynb', 'architecture_ablation.ipynb')
FIGURES = {'activation_ablation.ipynb': 'activation_ablation.png',
           'architecture_ablation.ipynb': 'architecture_ablation.png'}


def _read(name):
  return nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)


def _parameters_index(nb) -> int:
  tagged = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', [])]
  assert len(tagged) == 1, f'expected one cell tagged "parameters", found {len(tagged)}'
  return tagged[0]


def _kernel_env() -> dict:
  """This process's environment without the suite's 8 fake CPU devices (tests/conftest.py)."""
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(flags)
  return env


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp('ablation')
  return {'runs': str(root / 'runs'), 'data': str(root / 'tfds'), 'out': root}


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_committed_notebook_holds_a_full_run(name):
  nb = _read(name)
  params = nb.cells[_parameters_index(nb)].source
  assert "MODE = 'full'" in params
  text = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                 for o in c.get('outputs', []))
  assert "MODE='full'" in text, f'{name} is not saved with the outputs of a full-mode run'
  assert not any(o.get('output_type') == 'error' for c in nb.cells if c.cell_type == 'code'
                 for o in c.get('outputs', []))


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, dirs):
  nb = _read(name)
  injected = (f"MODE = 'smoke'\nRUNS_ROOT = {dirs['runs']!r}\nDATA_DIR = {dirs['data']!r}")
  nb.cells.insert(_parameters_index(nb) + 1, nbformat.v4.new_code_cell(
      injected, metadata={'tags': ['injected-parameters']}))
  client = NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': NOTEBOOK_DIR}})
  try:
    client.execute(env=_kernel_env())   # raises CellExecutionError naming the failing cell
  finally:
    nbformat.write(nb, str(dirs['out'] / name))
  text = ''.join(o.get('text', '') for c in nb.cells for o in c.get('outputs', []))
  assert "MODE='smoke'" in text
  images = sum('image/png' in o.get('data', {}) for c in nb.cells for o in c.get('outputs', []))
  assert images >= 1
  assert os.path.getsize(os.path.join(dirs['runs'], FIGURES[name])) > 10_000
