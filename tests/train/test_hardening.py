"""Interruptions, bad input and broken files never lose work or hang (issue 8).

Signals hit a real `python main.py` subprocess; everything else runs `trainer.train_and_evaluate`
in this process. All runs use tests/train/test_trainer.py's tiny config, so that they share compiled
programs through the persistent compilation cache (subprocesses get it through the environment).
"""
import hashlib
import logging
import os
import pickle
import random
import re
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from configs import small
from mnv3_jax.interop import keras_weights
from mnv3_jax.data import input_pipeline
from mnv3_jax.interop import pretrained
from mnv3_jax.train import trainer
from mnv3_jax.model import MobileNetV3
from tests.processes import main_processes  # pylint: disable=unused-import  (a fixture)
from tests.support import main_flags, restore_params, restore_state, tiny_config

NUM_STEPS = 8
STEP_LINE = re.compile(r' step +(\d+)/\d+ ')   # the progress lines: '09:24:28 step 3/8  37% ...'
# The seed of the tests' random choices (the SIGKILL step, a fresh model seed): MNV3_TEST_SEED
# replays a run; unset, each run draws one. Tests print it (pytest shows it with a failure).
SEED = int(os.environ.get('MNV3_TEST_SEED') or random.SystemRandom().randrange(1 << 31))


def _seed_note() -> str:
  note = f'MNV3_TEST_SEED={SEED}'
  print(note)
  return note


def run_config(data_dir, **overrides):
  """The runs' config: a checkpoint every 2 steps, a log line (and finiteness check) every step."""
  return tiny_config(data_dir, **{'num_train_steps': NUM_STEPS, 'checkpoint_every_steps': 2,
                                  'log_every_steps': 1, **overrides})


@pytest.fixture(scope='module')
def data_dir(digits_dir):
  return digits_dir


@pytest.fixture(scope='module')
def reference(data_dir, tmp_path_factory):
  """An uninterrupted run's workdir (checkpoints at steps 4, 6, 8) and its final train state."""
  workdir = tmp_path_factory.mktemp('reference')
  config = run_config(data_dir)
  trainer.train_and_evaluate(config, str(workdir))
  return workdir, restore_params(config, workdir)


def _assert_same_state(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _files(root: Path) -> dict:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob('*')) if p.is_file()}


def _steps(directory: Path) -> list:
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_sigkill_then_sigterm_then_rerun_equals_uninterrupted(data_dir, reference, tmp_path,
                                                               main_processes):
  config = run_config(data_dir)
  flags, workdir = main_flags(config), tmp_path / 'run'
  rng = random.Random(SEED)
  kill_at = rng.randint(3, NUM_STEPS - 3)   # after the first save has begun (see ENV)
  note = f'(SIGKILL after step {kill_at}; {_seed_note()})'

  # 1. SIGKILL at a random step: no chance to save anything.
  run = main_processes(flags, workdir)
  run.wait_for(rf' step +{kill_at}/')
  run.proc.send_signal(signal.SIGKILL)
  status, _ = run.wait(timeout=60)
  assert status == -signal.SIGKILL, note
  kept = _steps(workdir / 'checkpoints') if (workdir / 'checkpoints').is_dir() else []
  assert all(step < NUM_STEPS for step in kept), (kept, note)

  # 2. The same command resumes; SIGTERM a step later: it saves that step and exits, quickly.
  run = main_processes(flags, workdir)
  resumed = int(run.wait_for(r'resuming from step (\d+)|fresh start').group(1) or 0)
  assert resumed == max(kept, default=0), (resumed, kept, note)
  term_at = resumed + 1
  run.wait_for(rf' step +{term_at}/')
  run.proc.send_signal(signal.SIGTERM)
  status, log = run.wait(timeout=30)
  assert status == 0, log[-3000:]
  stopped = int(re.search(r'stopped at step (\d+) \(stop requested\)', log).group(1))
  assert term_at <= stopped <= NUM_STEPS
  assert stopped in _steps(workdir / 'checkpoints'), note

  # 3. The same command again finishes the run: bit-identical to the uninterrupted one.
  if stopped < NUM_STEPS:
    run = main_processes(flags, workdir)
    status, log = run.wait(timeout=600)
    assert status == 0, log[-3000:]
    assert f'resuming from step {stopped} in' in log
  _assert_same_state(restore_params(config, workdir), reference[1])


def test_sigterm_during_the_first_compile_exits_at_once(data_dir, tmp_path, main_processes):
  # Another seed: a train step no test has compiled, so the first step compiles for a while.
  # (A run's cache is its own, conftest.py: replaying a seed compiles afresh too.)
  config = run_config(data_dir, seed=SEED % 100000 + 1)
  note = _seed_note()
  workdir = tmp_path / 'run'
  run = main_processes(main_flags(config), workdir)
  run.wait_for(r'compiling the train step')
  run.proc.send_signal(signal.SIGTERM)
  status, log = run.wait(timeout=30)
  assert status == 0, (note, log[-3000:])
  assert 'SIGTERM before the first step' in log, note
  assert not STEP_LINE.search(log), note
  assert not list((workdir / 'checkpoints').glob('*'))


def _truncate_largest_file(step_dir: Path) -> Path:
  data = max((p for p in step_dir.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
  return data


def test_corrupt_newest_checkpoint_resumes_from_the_previous_one(data_dir, reference, tmp_path,
                                                                  caplog):
  caplog.set_level(logging.INFO, logger='absl')   # absl's own level may be WARNING here
  workdir = tmp_path / 'run'
  shutil.copytree(reference[0], workdir)
  newest = workdir / 'checkpoints' / str(NUM_STEPS)
  _truncate_largest_file(newest)
  previous = workdir / 'checkpoints' / str(NUM_STEPS - 2)
  previous_files = _files(previous)

  trainer.train_and_evaluate(run_config(data_dir), str(workdir))
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert any(f'Checkpoint {newest} (step {NUM_STEPS}) is broken' in m for m in warnings), warnings
  assert f'Resuming from checkpoint {previous} at step {NUM_STEPS - 2}' in caplog.text
  assert _files(previous) == previous_files
  assert (workdir / 'broken' / str(NUM_STEPS)).is_dir()   # set aside, not deleted
  _assert_same_state(restore_params(run_config(data_dir), workdir), reference[1])


def test_non_finite_loss_stops_with_the_step_and_metric(data_dir, tmp_path):
  # Warm-up from 1e-30 of a learning rate of 1e30: step 1 is fine, step 2 overflows.
  config = run_config(data_dir, checkpoint_every_steps=1, **{
      'optim.base_learning_rate': 1e30, 'optim.warmup_init_fraction': 1e-30})
  workdir = tmp_path / 'run'
  with pytest.raises(FloatingPointError) as error:
    trainer.train_and_evaluate(config, str(workdir))
  match = re.match(r'Non-finite (\w+) = (nan|inf|-inf) at step (\d+)', str(error.value))
  assert match, str(error.value)
  assert match.group(1) in {'loss', 'grad_norm', 'update_norm', 'param_norm'}
  step = int(match.group(3))
  saved = _steps(workdir / 'checkpoints')
  assert saved and max(saved) == step - 1, (saved, step)
  state, restored_step = restore_state(config, workdir)
  assert restored_step == step - 1
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def _write_png(path: Path, pixels: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path)


@pytest.fixture(scope='module')
def three_class_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('folder3')
  rng = np.random.default_rng(0)
  for label in 'abc':
    for i in range(4):
      _write_png(root / label / f'{i}.png', rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
  return root


@pytest.fixture
def compiles():
  """The XLA compilations (or loads from the persistent cache) while the test runs."""
  events = []

  def listen(event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  yield events
  jax._src.monitoring.unregister_event_duration_listener(listen)  # pylint: disable=protected-access


def _folder(root):
  return {'data.dataset': 'image_folder', 'data.data_dir': str(root),
          'data.folder_holdout_fraction': 0.25}


# (id, config overrides or a callable(tmp_path, data, reference) -> (overrides, workdir), what the
# message must contain: the bad value and what is allowed).
BAD_INPUTS = [
    ('variant', {'model.variant': 'medium'}, ["'medium'", "'large'", "'small'"]),
    ('activation', {'model.activation': 'mish'}, ["'mish'", "'hard_swish'", "'relu'"]),
    ('dataset', {'data.dataset': 'no_such_set'}, ["'no_such_set'", "'image_folder'", "'digits'"]),
    ('width_zero', {'model.width': 0.0}, ['width 0.0', '> 0']),
    ('width_negative', {'model.width': -0.5}, ['width -0.5', '> 0']),
    ('width_inf', {'model.width': float('inf')}, ['width inf', 'finite number > 0']),
    ('resolution', {'data.image_size': 16}, ['image_size 16', '>= 32']),
    ('batch_vs_devices', {'batch_size': 12}, ['batch_size 12', 'multiple of the device count 8']),
    ('learning_rate_zero', {'optim.base_learning_rate': 0.0}, ['base_learning_rate 0.0', '> 0']),
    ('learning_rate_nan', {'optim.base_learning_rate': float('nan')},
     ['base_learning_rate nan', 'finite number > 0']),
    ('bn_stats', {'bn_stats': 'local'}, ["'local'", "'global'", "'per_device'"]),
    ('folder_without_data_dir', {**_folder(None), 'data.data_dir': None},
     ['data_dir None', 'folder of class subfolders']),
    ('folder_missing', lambda tmp, ref, f3: ({**_folder(tmp / 'nowhere')}, tmp / 'w'),
     ['nowhere', 'is not a folder']),
    ('folder_without_images', 'empty_folder', ['.jpg/.jpeg/.png/.bmp/.gif', "split 'train'"]),
    ('workdir_not_writable', 'file_as_workdir', ['not writable', 'a directory this process']),
    ('init_from_other_variant', lambda tmp, ref, f3: (
        {'model.variant': 'large', 'init_from': str(ref)}, tmp / 'w'),
     ["model.variant: weights 'small', config 'large'", '--config.model.variant=small']),
    ('init_from_other_class_count', lambda tmp, ref, f3: (
        {**_folder(f3), 'model.num_classes': 3, 'init_from': str(ref)}, tmp / 'w'),
     ['model.num_classes: weights 10, config 3', '--config.model.num_classes=10']),
    # Small minimalistic, not Large: tracing Large's init for the restore target costs ~20 s.
    ('resume_other_variant', lambda tmp, ref, f3: ({'model.minimalistic': True}, ref),
     ['model.minimalistic: workdir False, this config True', 'checkpoints/8']),
    ('resume_other_class_count', lambda tmp, ref, f3: (
        {**_folder(f3), 'model.num_classes': 3}, ref),
     ['model.num_classes: workdir 10, this config 3', 'logits/kernel: checkpoint float32[']),
]


@pytest.mark.parametrize('name, bad, expected', BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_a_clear_error_before_any_compile(name, bad, expected, data_dir, reference,
                                                       three_class_folder, tmp_path, compiles):
  del name
  workdir = tmp_path / 'w'
  if callable(bad):
    bad, workdir = bad(tmp_path, reference[0], three_class_folder)
  elif bad == 'empty_folder':
    (tmp_path / 'imgs' / 'cat').mkdir(parents=True)
    (tmp_path / 'imgs' / 'cat' / 'notes.txt').write_text('not an image')
    bad = _folder(tmp_path / 'imgs')
  elif bad == 'file_as_workdir':
    (tmp_path / 'file').write_text('')
    bad, workdir = {}, tmp_path / 'file' / 'w'
  before = _files(reference[0])
  config = tiny_config(data_dir, **bad)
  with pytest.raises((ValueError, FileNotFoundError)) as error:
    trainer.train_and_evaluate(config, str(workdir))
  for text in expected:
    assert text in str(error.value), str(error.value)
  assert not compiles
  assert _files(reference[0]) == before   # a failed start leaves an existing run untouched


def test_unknown_config_string_key_names_it_and_the_allowed_ones():
  with pytest.raises(ValueError) as error:
    small.get_config('widht=0.5,res=96')
  for text in ["'widht'", "'width'", "'res'", "'variant'"]:
    assert text in str(error.value)


def test_corrupt_and_non_image_files_are_skipped_and_counted(data_dir, tmp_path, caplog):
  """The digits as a folder of PNGs (1497 train, 300 test: the tiny config's programs) plus files
  that do not decode; training counts and skips them."""
  root = tmp_path / 'digits'
  info = input_pipeline.get_dataset_info(tiny_config(data_dir).data)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder('sklearn_digits', data_dir=str(data_dir))
  for split in ('train', 'test'):
    for i, example in enumerate(tfds.as_numpy(builder.as_dataset(split=split))):
      _write_png(root / split / str(example['label']) / f'{i}.png', example['image'][..., 0])
  good_jpeg = root / 'train' / '3' / 'cut.jpg'
  Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(good_jpeg, quality=90)
  good_jpeg.write_bytes(good_jpeg.read_bytes()[:200])                       # truncated JPEG
  (root / 'train' / '5' / 'text.png').write_text('not a PNG at all')        # misnamed text
  (root / 'train' / '7' / 'empty.jpeg').write_bytes(b'')                    # empty file
  (root / 'train' / '0' / 'labels.csv').write_text('a,b\n')                 # not named as an image
  config = tiny_config(data_dir, num_train_steps=2, **{
      'data.dataset': 'image_folder', 'data.data_dir': str(root)})
  metrics = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert metrics['eval_count'] == info.num_eval_examples
  assert all(np.isfinite(v) for v in metrics.values())
  warning = [r.getMessage() for r in caplog.records if 'skipped' in r.getMessage()]
  assert len(warning) == 1, warning
  assert f'{root / "train"}: skipped 4 of {info.num_train_examples + 4} files' in warning[0]
  assert '1 not named as images' in warning[0] and '3 that do not decode' in warning[0]
  assert f'Training on the {info.num_train_examples} others' in warning[0]
  assert (tmp_path / 'run' / 'checkpoints' / '2').is_dir()


class _Payload:
  """Unpickling this creates the file `path`: a stand-in for arbitrary code in a pickle."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return open, (self.path, 'w')


def test_checkpoint_files_replaced_by_a_pickle_never_run_it(reference, tmp_path):
  """Every file that loading a trained run reads is JSON, msgpack or tensorstore data: a pickle in
  its place is an error, never executed. Each tampered file is accounted for: refused by name,
  or (the per-process OCDBT manifest, which a one-process checkpoint's top-level manifest makes
  redundant) shown unread: loading without it, or with the pickle there, gives the same weights."""
  marker = tmp_path / 'pwned'
  evil = pickle.dumps(_Payload(str(marker)))
  step = Path('checkpoints') / str(NUM_STEPS)
  item = step / 'state'
  unread = item / 'ocdbt.process_0' / 'manifest.ocdbt'
  targets = ['config.json', item / '_METADATA', item / '_sharding', item / 'manifest.ocdbt',
             item / 'array_metadatas' / 'process_0', step / 'fingerprints' / 'metadata', unread]
  clean = pretrained.load(reference[0] / step)[0]

  def copy(name):
    workdir = tmp_path / name
    shutil.copytree(reference[0] / step, workdir / step)
    shutil.copy(reference[0] / 'config.json', workdir / 'config.json')
    return workdir

  refused, loaded = [], {}
  for i, target in enumerate(targets):
    workdir = copy(f'w{i}')
    assert (workdir / target).is_file(), target
    (workdir / target).write_bytes(evil)
    try:
      loaded[str(target)] = pretrained.load(workdir / step)[0]
    except Exception:  # pylint: disable=broad-except
      refused.append(str(target))
    assert not marker.exists(), target
  assert refused == [str(t) for t in targets if t != unread], refused
  assert list(loaded) == [str(unread)], list(loaded)
  _assert_same_state(loaded[str(unread)], clean)
  workdir = copy('without')
  (workdir / unread).unlink()
  _assert_same_state(pretrained.load(workdir / step)[0], clean)


def test_keras_file_with_code_is_refused_without_running_it(tmp_path):
  import keras  # pylint: disable=g-import-not-at-top
  marker = tmp_path / 'pwned'
  inputs = keras.Input((4,))
  # eval: a lambda without closure cells, as an attacker would write it.
  outputs = keras.layers.Lambda(eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]"))(
      inputs)
  path = tmp_path / 'evil.keras'
  keras.Model(inputs, outputs).save(path)
  marker.unlink()   # building the model ran the lambda once
  with pytest.raises(ValueError, match='safe_mode'):
    keras_weights.load_keras(path, MobileNetV3(variant='small', num_classes=10))
  assert not marker.exists()
  keras.models.load_model(path, safe_mode=False)   # the file does carry code: unsafe loading runs it
  assert marker.exists()
