"""preflight: every config field is checked under its config name before the workdir is written,
and a resume with another global batch size is refused unless the config allows it."""
import logging
import math
import os
import re

import pytest
from ml_collections import config_dict

from configs import default
from mnv3_jax.data import input_pipeline
from mnv3_jax.parallel import sharding
from mnv3_jax.train import checkpointing
from mnv3_jax.train import preflight
from mnv3_jax.train import trainer
from tests.support import tiny_config

# (config field, a bad value): every field of preflight.FIELDS that can hold a bad value, plus
# model options (MobileNetV3 checks them; preflight names them as model.*).
BAD = [
    ('task', 'keypoints'), ('seed', -1), ('batch_size', 0), ('num_epochs', math.inf),
    ('num_train_steps', 0),
    ('optim.base_learning_rate', 0.0), ('optim.base_batch_size', 0),
    ('optim.warmup_epochs', -1.0), ('optim.warmup_init_fraction', 1.5),
    ('optim.decay_rate', 0.0), ('optim.decay_epochs', math.nan), ('optim.rmsprop_decay', 1.0),
    ('optim.momentum', -0.1), ('optim.epsilon', 0.0), ('optim.weight_decay', -1e-5),
    ('optim.initial_scale', math.inf), ('quant', 'int8'), ('qat.freeze_bn_epochs', -1.0),
    ('qat.freeze_ranges_epochs', math.nan), ('qat.range_decay', 1.0),
    ('label_smoothing', 1.0), ('ema_decay', math.nan),
    ('ema_decay', 1.5), ('log_every_steps', 0), ('eval_every_steps', -1),
    ('checkpoint_every_steps', 0), ('keep_checkpoints', 0), ('keep_best', -1),
    ('profile_first_step', -2), ('data.dataset', ''), ('data.train_split', ''),
    ('data.eval_split', ''), ('data.folder_holdout_fraction', 1.0), ('data.image_size', 31),
    ('data.crop_area_range', (0.5, 0.2)), ('data.crop_area_range', (0.0, 1.0)),
    ('data.crop_area_range', (0.5,)), ('data.aspect_ratio_range', (1.0, math.inf)),
    ('data.aspect_ratio_range', (1.5, 1.0)), ('data.eval_crop_fraction', 0.0),
    ('data.shuffle_buffer', 0), ('data.num_parallel_calls', 0),
    ('model.width', math.nan), ('model.variant', 'tiny'), ('model.dropout_rate', 1.0),
]
# Fields whose checks live elsewhere: bn_stats (steps.check_bn_stats, tested in test_bn_stats)
# and data fields the data module checks itself (input_pipeline, run by check_config).
CHECKED_ELSEWHERE = {'bn_stats', 'data.max_image_pixels'}


def _set(config, field, value):
  *parents, leaf = field.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


def _flat(config, prefix=''):
  out = set()
  for key, value in config.items():
    out |= (_flat(value, f'{prefix}{key}.') if isinstance(value, config_dict.ConfigDict)
            else {prefix + key})
  return out


def snapshot(path):
  """Every file and folder under `path`: its size and modification time."""
  return {os.path.relpath(os.path.join(d, n), path): (os.stat(os.path.join(d, n)).st_size,
                                                      os.stat(os.path.join(d, n)).st_mtime_ns)
          for d, dirs, files in os.walk(path) for n in dirs + files}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('data')


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
  """A workdir trained 3 steps at batch_size 16 (config.json, checkpoints/3, best/, events)."""
  workdir = str(tmp_path_factory.mktemp('trained'))
  trainer.train_and_evaluate(tiny_config(data_dir, num_train_steps=3), workdir)
  return workdir


def test_every_settable_field_is_checked():
  fields = {name for name, _, _ in preflight.FIELDS}
  settable = {f for f in _flat(default.base_config()) if not f.startswith('model.')}
  assert settable - CHECKED_ELSEWHERE <= fields
  assert {f for f, _ in BAD if not f.startswith('model.')} == fields - {
      'init_from', 'allow_batch_size_change', 'data.data_dir', 'data.random_flip', 'data.cache',
      'optim.staircase'}   # strings and booleans: the config's own types keep them right


@pytest.mark.parametrize('field,value', BAD, ids=[f'{f}={v!r}' for f, v in BAD])
def test_a_bad_field_is_named_before_the_workdir_is_touched(data_dir, trained, field, value):
  config = tiny_config(data_dir)
  _set(config, field, value)
  before = snapshot(trained)
  with pytest.raises(ValueError, match=rf'(Invalid|Unknown) {re.escape(f"{field} {value!r}")}'):
    preflight.check_config(config, trained, sharding.make_mesh())
  assert snapshot(trained) == before


def test_a_bad_field_does_not_create_the_workdir(data_dir, tmp_path):
  config = tiny_config(data_dir, keep_checkpoints=0)
  with pytest.raises(ValueError, match='Invalid keep_checkpoints 0; allowed: an integer >= 1'):
    preflight.check_config(config, str(tmp_path / 'new'), sharding.make_mesh())
  assert not (tmp_path / 'new').exists()


def test_a_data_dir_that_is_a_file_is_named(data_dir, tmp_path):
  (tmp_path / 'file').write_text('not a folder')
  config = tiny_config(data_dir)
  config.data.data_dir = str(tmp_path / 'file')
  with pytest.raises(ValueError, match=re.escape(f"data.data_dir '{tmp_path / 'file'}': it is a "
                                                 'file; allowed: a directory')):
    preflight.check_config(config, str(tmp_path / 'w'), sharding.make_mesh())
  assert not (tmp_path / 'w').exists()


def test_resume_with_another_batch_size_is_refused_naming_both(data_dir, trained):
  before = snapshot(trained)
  assert 'config.json' in before and 'checkpoints/3' in before
  config = tiny_config(data_dir, num_train_steps=6, batch_size=8)
  with pytest.raises(ValueError, match=r'Invalid batch_size 8: workdir .* was trained with '
                                       r'batch_size 16 .*allow_batch_size_change=True'):
    trainer.train_and_evaluate(config, trained)
  assert snapshot(trained) == before


def test_an_allowed_batch_size_change_says_what_changes(data_dir, trained, caplog):
  config = tiny_config(data_dir, batch_size=8, allow_batch_size_change=True)
  examples = input_pipeline.get_dataset_info(config.data).num_train_examples
  with caplog.at_level(logging.WARNING):
    preflight.check_resume(config, trained, examples)
  lines = [r.getMessage() for r in caplog.records if 'allow_batch_size_change' in r.getMessage()]
  assert len(lines) == 1
  before, after = examples // 16, examples // 8       # steps per epoch
  assert ('batch_size 8 instead of 16' in lines[0]
          and f'steps per epoch {before} -> {after}' in lines[0]
          and f'restored step 3, epoch {3 / before:.2f} so far, is now epoch {3 / after:.2f}'
          in lines[0]), lines[0]


def test_resume_with_the_same_batch_size_or_without_checkpoints_passes(data_dir, trained,
                                                                        tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    preflight.check_resume(tiny_config(data_dir), trained, 1000)
    checkpointing.save_config(str(tmp_path), tiny_config(data_dir))   # a run that never saved
    preflight.check_resume(tiny_config(data_dir, batch_size=8), str(tmp_path), 1000)
    preflight.check_resume(tiny_config(data_dir, batch_size=8), str(tmp_path / 'new'), 1000)
  assert not caplog.records


def test_a_damaged_workdir_config_is_named(data_dir, trained, tmp_path):
  workdir = tmp_path / 'copy'
  (workdir / 'checkpoints' / '3').mkdir(parents=True)
  (workdir / 'config.json').write_text('{"batch_')
  with pytest.raises(ValueError, match=re.escape(f'{workdir}/config.json is not a run config')):
    preflight.check_resume(tiny_config(data_dir), str(workdir), 1000)
