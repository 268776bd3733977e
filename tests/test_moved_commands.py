"""The command lines of the flat layout (`python -m mnv3_jax.summary`, ...) still run, and say
where their module went."""
import json
import subprocess
import sys

import pytest


def test_old_summary_command_runs_and_names_its_new_home():
  out = subprocess.run([sys.executable, '-m', 'mnv3_jax.summary', '--variant', 'small', '--json'],
                       capture_output=True, text=True, check=True)
  assert json.loads(out.stdout)['params'] == 2_542_856
  assert 'mnv3_jax.summary moved to mnv3_jax.model.summary' in out.stderr


@pytest.mark.parametrize('old,new', [('summary', 'model.summary'),
                                     ('import_weights', 'interop.import_weights'),
                                     ('benchmark_tflite', 'export.benchmark')])
def test_old_modules_are_not_importable_as_libraries(old, new):
  with pytest.raises(ImportError, match=f'mnv3_jax.{new}'):
    __import__(f'mnv3_jax.{old}')
