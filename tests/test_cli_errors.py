"""Bad input to the real command lines (main.py, import_weights, summary), each run as a process:
it ends with status 2 and at most 3 lines on stderr that name the bad value, before any compile,
and leaves the workdir (or output folder) as it was; the traceback only when asked for."""
import concurrent.futures
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from configs import demo, det_demo
from mnv3_jax import cli_errors
from mnv3_jax.data import input_pipeline
from mnv3_jax.train import checkpointing

ROOT = Path(__file__).resolve().parents[1]
MAIN = [sys.executable, 'main.py', '--config=configs/demo.py', '--workdir={W}',
        '--config.data.data_dir={D}']
IMPORT = [sys.executable, '-m', 'mnv3_jax.interop.import_weights', '--variant=small']
SUMMARY = [sys.executable, '-m', 'mnv3_jax.model.summary']
EXPORT = [sys.executable, '-m', 'mnv3_jax.export']
# (name, command, texts stderr must name, workdir: 'run' (a workdir with config.json at
# batch_size 64 and a checkpoint), 'detection run' (the same of configs/det_demo.py), 'fresh' (must
# not be created), 'file' (a file) or None).
# {W}: the workdir, {D}: the digits' TFDS folder, {F}: a file, {PTH}: a truncated .pth, {H5}: a
# file that is not HDF5.
CASES = [
    ('misspelt field', [*MAIN, '--config.batch_sizee=3'],
     ['--config.batch_sizee=3', 'did you mean config.batch_size'], 'run'),
    ('misspelt data field', [*MAIN, '--config.data.crop_aera=0.5'],
     ['data.crop_aera', 'crop_area_range'], 'fresh'),
    ('missing config file', [sys.executable, 'main.py', '--config=configs/nope.py',
                             '--workdir={W}'], ['configs/nope.py', 'does not exist'], 'fresh'),
    ('bad config-string key', [sys.executable, 'main.py', '--config=configs/small.py:wdth=1',
                               '--workdir={W}'], ["'wdth'", 'width'], 'run'),
    ('keep_checkpoints 0', [*MAIN, '--config.keep_checkpoints=0'],
     ['keep_checkpoints 0', 'integer >= 1'], 'run'),
    ('ema_decay nan', [*MAIN, '--config.ema_decay=nan'], ['ema_decay nan', '[0, 1]'], 'run'),
    ('crop range reversed', [*MAIN, '--config.data.crop_area_range=(0.5,0.2)'],
     ['data.crop_area_range (0.5, 0.2)', '0 < lo <= hi <= 1'], 'run'),
    ('digits data_dir a file', [*MAIN, '--config.data.data_dir={F}'],
     ['data.data_dir', '{F}', 'a directory'], 'fresh'),
    ('batch_size not a number', [*MAIN, '--config.batch_size=abc'], ["'abc'"], 'run'),
    ('resume with another batch_size', [*MAIN, '--config.batch_size=32'],
     ['batch_size 32', 'batch_size 64', 'allow_batch_size_change'], 'run'),
    ('model.width negative', [*MAIN, '--config.model.width=-1.0'],
     ['model.width -1.0', '> 0'], 'fresh'),
    ('label_smoothing 1', [*MAIN, '--config.label_smoothing=1.0'],
     ['label_smoothing 1.0', '[0, 1)'], 'run'),
    ('keep_best negative', [*MAIN, '--config.keep_best=-1'], ['keep_best -1'], 'fresh'),
    ('num_train_steps 0', [*MAIN, '--config.num_train_steps=0'], ['num_train_steps 0'], 'run'),
    ('optim.momentum 1', [*MAIN, '--config.optim.momentum=1.0'],
     ['optim.momentum 1.0', '[0, 1)'], 'run'),
    ('shuffle_buffer 0', [*MAIN, '--config.data.shuffle_buffer=0'],
     ['data.shuffle_buffer 0'], 'run'),
    ('extra argument', [*MAIN, 'extra'], ["'extra'"], 'run'),
    ('unknown flag', [*MAIN, '--bogus_flag=1'], ['bogus_flag'], 'run'),
    ('no workdir', [sys.executable, 'main.py', '--config=configs/demo.py'], ['--workdir'], None),
    ('workdir a file', [sys.executable, 'main.py', '--config=configs/demo.py', '--workdir={W}'],
     ['{W}', 'not writable'], 'file'),
    ('truncated .pth', [*IMPORT, '--format=torchvision', '--source={PTH}', '--out={W}'],
     ['{PTH}', 'damaged'], 'fresh'),
    ('not an HDF5 file', [*IMPORT, '--format=keras', '--source={H5}', '--out={W}'],
     ['{H5}', 'HDF5'], 'fresh'),
    ('missing source', [*IMPORT, '--format=timm', '--source={W}.safetensors', '--out={W}'],
     ['{W}.safetensors'], 'fresh'),
    ('out a file', [*IMPORT, '--format=torchvision', '--source={PTH}', '--out={W}'],
     ['{W}', 'is a file'], 'file'),
    ('out not empty', [*IMPORT, '--format=torchvision', '--source={PTH}', '--out={W}'],
     ['{W}', 'not empty'], 'run'),
    ('unknown format', [*IMPORT, '--format=onnx', '--source={PTH}', '--out={W}'],
     ['onnx', 'torchvision'], 'fresh'),
    ('summary width', [*SUMMARY, '--width', '-1'], ['-1.0', '> 0'], None),
    ('summary resolution', [*SUMMARY, '--resolution', '31x224'], ['31x224', '>= 32'], None),
    ('summary variant', [*SUMMARY, '--variant', 'tiny'], ["'tiny'", 'small'], None),
    ('export a detection run', [*EXPORT, '--workdir={W}', '--out={W}.export'],
     ['{W}', "'detection' run", "'classification'"], 'detection run'),
]


def snapshot(path):
  """Every file and folder at or under `path`: its size and modification time (None if absent)."""
  if not os.path.exists(path):
    return None
  if os.path.isfile(path):
    return os.stat(path).st_size, os.stat(path).st_mtime_ns
  return {os.path.relpath(os.path.join(d, n), path): (os.stat(os.path.join(d, n)).st_size,
                                                      os.stat(os.path.join(d, n)).st_mtime_ns)
          for d, dirs, files in os.walk(path) for n in dirs + files}


def _run_workdir(path, config_module=demo):
  """A training workdir of configs/demo.py (batch_size 64; or `config_module`'s demo config) with
  a checkpoint at step 3."""
  checkpointing.save_config(str(path), config_module.demo_config())
  ckpt = checkpointing.Checkpointer(str(path), save_every_steps=1)
  ckpt.save(3, {'w': np.zeros(4, np.float32)}, force=True)
  ckpt.wait_until_finished()
  ckpt.close()


def _run(command, env=None):
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, **(env or {})}, check=False)


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  """{case name: (completed process, workdir snapshot before, after, names)}, run 2 at a time."""
  root = tmp_path_factory.mktemp('cli')
  template, detection_template = root / 'template', root / 'detection_template'
  _run_workdir(template)
  _run_workdir(detection_template, det_demo)
  data = demo.demo_config().data
  data.data_dir = str(root / 'tfds')
  input_pipeline.get_dataset_info(data)    # builds the digits there once, not in each process
  names = {'D': data.data_dir, 'F': str(root / 'a_file'), 'PTH': str(root / 'cut.pth'),
           'H5': str(root / 'bad.h5')}
  Path(names['F']).write_text('not a folder\n')
  torch.save({'w': torch.zeros(1000)}, root / 'full.pth')
  Path(names['PTH']).write_bytes((root / 'full.pth').read_bytes()[:2000])
  Path(names['H5']).write_bytes(b'not hdf5' * 100)
  jobs = {}
  for i, (name, command, _, kind) in enumerate(CASES):
    workdir = root / f'case{i}'
    if kind in ('run', 'detection run'):
      shutil.copytree(template if kind == 'run' else detection_template, workdir)
    elif kind == 'file':
      workdir.write_text('a file\n')
    case_names = {**names, 'W': str(workdir)}
    jobs[name] = ([part.format(**case_names) for part in command], str(workdir), case_names)
  env = {cli_errors.TRACEBACK_ENV: ''}

  def one(name):
    command, workdir, case_names = jobs[name]
    before = snapshot(workdir)
    done = _run(command, env)
    return name, (done, before, snapshot(workdir), case_names)

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    return dict(pool.map(one, jobs))


def test_at_least_20_cases():
  assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize('name,texts,kind', [(c[0], c[2], c[3]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_line_naming_it(results, name, texts, kind):
  done, before, after, names = results[name]
  err = [line for line in done.stderr.splitlines() if line.strip()]
  assert done.returncode == cli_errors.EXIT_USER_ERROR, done.stderr
  assert 1 <= len(err) <= 3 and err[-1].startswith('error: '), done.stderr
  for text in texts:
    assert text.format(**names) in err[-1], err[-1]
  assert 'Traceback' not in done.stderr
  assert after == before
  if kind == 'fresh':
    assert before is None


@pytest.mark.parametrize('how', [{'env': {cli_errors.TRACEBACK_ENV: '1'}},
                                 {'flags': ['-v', '1']}])
def test_the_traceback_shows_at_a_higher_verbosity(tmp_path, how):
  command = [sys.executable, 'main.py', '--config=configs/nope.py', f'--workdir={tmp_path}/w',
             *how.get('flags', [])]
  done = _run(command, how.get('env'))
  assert done.returncode == cli_errors.EXIT_USER_ERROR
  assert 'Traceback (most recent call last)' in done.stderr
  assert done.stderr.splitlines()[-1].startswith('error: --config=configs/nope.py: ')


def test_a_programming_error_keeps_its_traceback(tmp_path):
  """A TypeError is not a user error: absl's traceback and status 1, not an `error:` line."""
  script = ('from mnv3_jax import cli_errors\n'
            'def main(argv):\n'
            '  return len(3)\n'
            'cli_errors.run(main)\n')
  done = _run([sys.executable, '-c', script])
  assert done.returncode == 1
  assert 'TypeError' in done.stderr and 'Traceback' in done.stderr
  assert 'error: ' not in done.stderr
