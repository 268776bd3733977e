"""The export command lines refuse bad input in one line, in a real `python -m` process, before any
conversion, and leave no output folder behind.

The checkpoints are training workdirs as the trainer leaves them (`Checkpointer`), with random
weights: these cases never get as far as running the model.
"""
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import demo
from mnv3_jax import cli_errors
from mnv3_jax import model as model_lib
from mnv3_jax.train import checkpointing
from mnv3_jax.train import steps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_workdir(workdir, ema_nan_at=None):
  """A workdir holding one checkpoint of a random Small 0.35 train state (32x32 digits config);
  with ema_nan_at='path/of/leaf', that EMA weight's first element is NaN."""
  config = demo.demo_config()
  config.model.width = 0.35
  model = model_lib.MobileNetV3(**{**config.model.to_dict(), 'depthwise_impl': 'conv'})
  rng = np.random.default_rng(0)
  state = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), jax.eval_shape(
      lambda key: steps.create_train_state(model, optax.sgd(0.1), key, (32, 32)),
      jax.random.key(0)))
  if ema_nan_at:
    traverse_util.flatten_dict(state.ema_params, sep='/')[ema_nan_at].flat[0] = np.nan
  checkpointing.save_config(str(workdir), config)
  ckpt = checkpointing.Checkpointer(str(workdir), save_every_steps=1)
  ckpt.save(1, state, force=True)
  ckpt.close()
  return str(workdir)


def run(module, *args):
  """(exit status, stderr lines) of `python -m module args` at default verbosity."""
  env = {k: v for k, v in os.environ.items() if k != cli_errors.TRACEBACK_ENV}
  proc = subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  return proc.returncode, proc.stderr.splitlines()


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return make_workdir(tmp_path_factory.mktemp('run'))


def test_nan_weights_are_refused_by_name(tmp_path):
  leaf = 'stem/conv/kernel'
  source = make_workdir(tmp_path / 'run', ema_nan_at=leaf)
  out = tmp_path / 'out'
  status, stderr = run('mnv3_jax.export', f'--workdir={source}', f'--out={out}', '--int8')
  assert status == cli_errors.EXIT_USER_ERROR, stderr
  # The checkpoint reader's warnings may come first (warnings always show); no traceback.
  assert 'Traceback (most recent call last):' not in stderr and stderr[-1] == (
      f'error: The weights of {source} are not finite (1 arrays, e.g. params/{leaf}: 1 NaN, 0 inf '
      'of 432): a damaged checkpoint? Nothing exported.'), stderr
  assert sorted(os.listdir(tmp_path)) == ['run']


def test_out_that_is_a_file_is_refused_in_one_line(tmp_path, workdir):
  afile = tmp_path / 'afile'
  afile.write_text('mine')
  status, stderr = run('mnv3_jax.export', f'--workdir={workdir}', f'--out={afile}')
  assert status == cli_errors.EXIT_USER_ERROR
  assert stderr == [f'error: --out={afile} is a file, not a directory; pass a new or empty '
                    'directory.']
  assert afile.read_text() == 'mine' and os.listdir(tmp_path) == ['afile']


def test_benchmark_of_a_missing_export_is_refused_in_one_line(tmp_path):
  missing = tmp_path / 'none'
  status, stderr = run('mnv3_jax.export.benchmark', f'--export_dir={missing}')
  assert status == cli_errors.EXIT_USER_ERROR
  assert len(stderr) == 1 and str(missing / 'export.json') in stderr[0], stderr
