"""Checkpointer on real orbax checkpoints on disk: round trip, retention, corruption, crash leftovers."""
import hashlib
import json
import logging
import shutil
from typing import Any

import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import pytest

from mnv3_jax.storage import fingerprints
from mnv3_jax.train import checkpointing


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  ema_batch_stats: Any


def _mesh():
  return Mesh(np.array(jax.devices()), ('data',))


def _update(params, grads, batch_stats, step):
  tx = optax.chain(optax.add_decayed_weights(1e-5),
                   optax.rmsprop(0.01, decay=0.9, eps=2e-3, initial_scale=1.0, momentum=0.9))
  updates, opt_state = tx.update(grads, tx.init(params), params)
  params = optax.apply_updates(params, updates)
  return TrainState(step=step, params=params, batch_stats=batch_stats, opt_state=opt_state,
                    ema_params=jax.tree.map(lambda p: 0.9 * p, params), ema_batch_stats=batch_stats)


def _state(seed: int) -> TrainState:
  """A train state like the trainer's (TF1 RMSProp after one update), replicated over all devices."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.standard_normal(shape, dtype=np.float32)
  params = {'conv': {'kernel': normal(64, 64)}, 'bn': {'scale': normal(64), 'bias': normal(64)},
            'logits': {'kernel': normal(64, 10), 'bias': normal(10)}}
  grads = jax.tree.map(lambda p: normal(*p.shape), params)
  batch_stats = {'bn': {'mean': normal(64), 'var': normal(64) ** 2}}
  build = jax.jit(_update, out_shardings=NamedSharding(_mesh(), P()))
  return build(params, grads, batch_stats, np.int32(seed))


def _abstract(state, kernel_spec=P()):
  """The restore target; params/conv/kernel may ask for another sharding than the saved one."""
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  kernel = abstract.params['conv']['kernel']
  sharded = jax.ShapeDtypeStruct(kernel.shape, kernel.dtype, sharding=NamedSharding(_mesh(), kernel_spec))
  return abstract.replace(params={**abstract.params, 'conv': {'kernel': sharded}})


def _assert_bit_identical(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b   # same dataclass and optax namedtuple types
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert (x.dtype, x.shape) == (y.dtype, y.shape) and x.tobytes() == y.tobytes()


def _files(root):
  """{relative path: sha256} of every file under root."""
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob('*')) if p.is_file()}


def _steps(directory):
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _save_all(workdir, states, **kwargs):
  ckpt = checkpointing.Checkpointer(str(workdir), save_every_steps=1, **kwargs)
  for step, state in states.items():
    assert ckpt.save(step, state)
  ckpt.close()


def _largest_data_file(step_dir):
  return max((step_dir / 'state' / 'ocdbt.process_0' / 'd').iterdir(), key=lambda p: p.stat().st_size)


def _truncate_array_data(step_dir):
  data = _largest_data_file(step_dir)
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])


def _garble_array_data(step_dir):
  data = _largest_data_file(step_dir)
  raw = bytearray(data.read_bytes())
  middle = len(raw) // 2
  raw[middle:middle + 8] = bytes(b ^ 0x5A for b in raw[middle:middle + 8])
  data.write_bytes(bytes(raw))


def _delete_array_metadata(step_dir):
  (step_dir / 'state' / '_METADATA').unlink()


def _garble_array_metadata(step_dir):
  path = step_dir / 'state' / '_METADATA'
  path.write_bytes(path.read_bytes()[:100])


def _delete_fingerprints(step_dir):
  (step_dir / 'fingerprints' / 'metadata').unlink()


def _alter_a_fingerprint(step_dir):
  path = step_dir / 'fingerprints' / 'metadata'
  saved = json.loads(path.read_text())
  key = sorted(saved)[0]
  saved[key] ^= 1
  path.write_text(json.dumps(saved))


def test_round_trip_is_bit_identical_and_resharded(tmp_path, caplog):
  state = _state(1)
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every_steps=5)
  assert not ckpt.save(3, state)                  # not due
  assert ckpt.save(5, state)
  assert not ckpt.save(5, state, force=True)      # exists already
  donated = _state(7)
  assert ckpt.save(7, donated, force=True)
  for leaf in jax.tree.leaves(donated):   # as donation would: the save must not need them any more
    leaf.delete()
  assert not ckpt.reached_preemption(7)
  ckpt.close()
  assert _steps(tmp_path / 'checkpoints') == [5, 7]

  caplog.set_level(logging.INFO, logger='absl')   # absl's own level may be WARNING here
  fresh = checkpointing.Checkpointer(str(tmp_path), save_every_steps=5)
  target = _abstract(state, kernel_spec=P('data', None))
  restored, step = fresh.restore(target)
  assert step == 7
  _assert_bit_identical(restored, _state(7))
  for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
    assert leaf.sharding == want.sharding
  assert restored.params['conv']['kernel'].sharding.spec == P('data', None)
  assert f'Resuming from checkpoint {tmp_path / "checkpoints" / "7"} at step 7' in caplog.text
  fresh.close()


def test_restore_of_empty_workdir_returns_none(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every_steps=1)
  assert ckpt.restore(_abstract(_state(0))) == (None, None)
  assert ckpt.latest_step() is None
  ckpt.close()


def test_keeps_the_newest_n(tmp_path):
  state = _state(0)
  _save_all(tmp_path, {step: state for step in range(1, 6)}, keep=2)
  assert _steps(tmp_path / 'checkpoints') == [4, 5]


@pytest.mark.parametrize('mode, kept', [('max', [2, 5]), ('min', [1, 4])])
def test_keeps_the_best_k_by_metric(tmp_path, mode, kept):
  state = _state(0)
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every_steps=100, keep_best=2,
                                    best_metric='ema_top1', best_mode=mode)
  for step, top1 in zip(range(1, 7), [0.5, 0.9, 0.7, 0.3, 0.8, float('nan')]):
    ckpt.save_best(step, state, {'ema_top1': jnp.float32(top1), 'loss': 1.0 - top1})
  with pytest.raises(ValueError, match='ema_top1'):
    ckpt.save_best(7, state, {'top1': 0.99})
  ckpt.close()
  assert _steps(tmp_path / 'best') == kept
  stored = json.loads((tmp_path / 'best' / str(kept[0]) / 'metrics' / 'metrics').read_text())
  assert stored['ema_top1'] == pytest.approx({'max': 0.9, 'min': 0.5}[mode])


@pytest.mark.parametrize('corrupt', [_truncate_array_data, _garble_array_data, _delete_array_metadata,
                                     _garble_array_metadata, _delete_fingerprints,
                                     _alter_a_fingerprint])
def test_broken_newest_falls_back_to_previous(tmp_path, caplog, corrupt):
  _save_all(tmp_path, {1: _state(1), 2: _state(2)})
  broken_dir = tmp_path / 'checkpoints' / '2'
  corrupt(broken_dir)
  before = _files(tmp_path / 'checkpoints')

  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every_steps=1)
  restored, step = ckpt.restore(_abstract(_state(0)))
  assert step == 1
  _assert_bit_identical(restored, _state(1))
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(str(broken_dir) in m and 'step 2' in m for m in warnings), warnings
  # Nothing deleted: step 1 untouched, step 2 moved whole to broken/ for inspection.
  after = _files(tmp_path / 'checkpoints')
  moved = {f'2/{k}': v for k, v in _files(tmp_path / 'broken' / '2').items()}
  assert {**after, **moved} == before
  # The broken step no longer blocks saving that step again.
  assert ckpt.save(2, _state(22))
  ckpt.close()
  assert _steps(tmp_path / 'checkpoints') == [1, 2]


def test_broken_newer_ones_never_cost_the_last_good_one(tmp_path):
  _save_all(tmp_path, {1: _state(1), 2: _state(2), 3: _state(3)}, keep=3)
  _truncate_array_data(tmp_path / 'checkpoints' / '2')
  _delete_fingerprints(tmp_path / 'checkpoints' / '3')
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every_steps=1, keep=3)
  restored, step = ckpt.restore(_abstract(_state(0)))
  assert step == 1
  for new_step in (2, 3):
    assert ckpt.save(new_step, _state(10 + new_step))
  ckpt.wait_until_finished()
  assert _steps(tmp_path / 'checkpoints') == [1, 2, 3]   # keep=3 counts only good ones
  assert _steps(tmp_path / 'broken') == [2, 3]
  assert ckpt.save(4, _state(14))
  ckpt.close()
  assert _steps(tmp_path / 'checkpoints') == [2, 3, 4]


def test_only_broken_checkpoints_raise_and_move_nothing(tmp_path):
  _save_all(tmp_path, {1: _state(1)})
  _garble_array_data(tmp_path / 'checkpoints' / '1')
  before = _files(tmp_path)
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every_steps=1)
  with pytest.raises(RuntimeError, match='No checkpoint'):
    ckpt.restore(_abstract(_state(0)))
  ckpt.close()
  assert _files(tmp_path) == before


def test_half_written_tmp_dir_is_ignored(tmp_path):
  _save_all(tmp_path, {1: _state(1)})
  # What a crash mid-save leaves: a tmp directory, never renamed, without commit markers.
  leftover = tmp_path / 'checkpoints' / '2.orbax-checkpoint-tmp'
  shutil.copytree(tmp_path / 'checkpoints' / '1', leftover)
  for marker in leftover.rglob('commit_success.txt'):
    marker.unlink()
  _truncate_array_data(leftover)

  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every_steps=1)
  assert ckpt.latest_step() == 1
  restored, step = ckpt.restore(_abstract(_state(0)))
  assert step == 1
  _assert_bit_identical(restored, _state(1))
  assert leftover.is_dir()
  assert ckpt.save(2, _state(2))   # orbax replaces the leftover
  ckpt.close()
  restored, step = checkpointing.Checkpointer(str(tmp_path), save_every_steps=1).restore(
      _abstract(_state(0)))
  assert step == 2
  _assert_bit_identical(restored, _state(2))


def test_checkpoint_of_another_state_is_an_error_not_corruption(tmp_path):
  _save_all(tmp_path, {1: _state(1)})
  before = _files(tmp_path)
  other = _abstract(_state(0))
  other = other.replace(params={**other.params, 'logits': {
      'kernel': jax.ShapeDtypeStruct((64, 12), jnp.float32, sharding=NamedSharding(_mesh(), P())),
      'bias': other.params['logits']['bias']}})
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every_steps=1)
  with pytest.raises(checkpointing.IncompatibleCheckpointError, match=r'params/logits/kernel'):
    ckpt.restore(other)
  ckpt.close()
  assert _files(tmp_path) == before


def test_fingerprints_see_one_bit_and_ignore_sharding():
  x = np.random.default_rng(0).standard_normal((64, 8), dtype=np.float32)
  flipped = x.copy()
  flipped.view(np.uint32)[37, 5] ^= 1
  swapped = x.copy()
  swapped[0, :2] = x[0, 1::-1]
  sharded = jax.device_put(x, NamedSharding(_mesh(), P('data', None)))
  prints = [fingerprints.fingerprints({'x': v})['x'] for v in (x, flipped, swapped, sharded)]
  assert prints[0] != prints[1] and prints[0] != prints[2] and prints[0] == prints[3]


@pytest.mark.parametrize('kwargs, name', [
    ({'save_every_steps': 0}, 'save_every_steps'), ({'save_every_steps': 1, 'keep': 0}, 'keep'),
    ({'save_every_steps': 1, 'keep_best': -1}, 'keep_best'),
    ({'save_every_steps': 1, 'best_mode': 'median'}, 'best_mode')])
def test_bad_options_raise(tmp_path, kwargs, name):
  with pytest.raises(ValueError, match=name):
    checkpointing.Checkpointer(str(tmp_path), **kwargs)
  assert not (tmp_path / 'checkpoints').exists()


def test_save_config_round_trips(tmp_path):
  config = ml_collections.ConfigDict({
      'model': {'variant': 'small', 'width': 0.75, 'dropout': 0.2},
      'batch_size': 256, 'lr_boundaries': (3, 6, 9), 'ema': True, 'data_dir': None})
  config.lock()
  checkpointing.save_config(str(tmp_path / 'run'), config)
  loaded = ml_collections.ConfigDict(json.loads((tmp_path / 'run' / 'config.json').read_text()))
  assert loaded.model.variant == 'small' and loaded.model.width == 0.75
  assert loaded.model.dropout == 0.2 and loaded.batch_size == 256
  assert tuple(loaded.lr_boundaries) == (3, 6, 9) and loaded.ema is True and loaded.data_dir is None
  assert sorted(loaded.keys()) == sorted(config.keys())
  assert not (tmp_path / 'run' / 'config.json.tmp').exists()
