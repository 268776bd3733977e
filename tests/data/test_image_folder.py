"""Image folders read as users mean them: which subfolders are classes, fewer than two classes,
images over the pixel limit. Real folders of real PNG/JPEG/GIF files, read through the input
pipeline; an example is identified by its constant colour."""
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mnv3_jax.data import input_pipeline
from mnv3_jax.parallel import sharding
from mnv3_jax.train import preflight
from tests.support import tiny_config

_ROOT = Path(__file__).resolve().parents[2]


def _images(folder, colours, fmt='png'):
  """One constant-colour 12x10 image per colour in `folder`, named after its colour."""
  folder.mkdir(parents=True, exist_ok=True)
  for c in colours:
    Image.new('RGB', (12, 10), (c,) * 3).save(folder / f'{c}.{fmt}')


def _config(root, **overrides):
  cfg = input_pipeline.default_data_config()
  cfg.update(dict(dataset='image_folder', data_dir=str(root), image_size=8, shuffle_buffer=64,
                  num_parallel_calls=2, folder_holdout_fraction=1 / 3), **overrides)
  return cfg


def _warnings(caplog, text):
  return [r.getMessage() for r in caplog.records
          if r.levelno == logging.WARNING and text in r.getMessage()]


def _colours_and_labels(batch):
  """[(colour in [0, 255], label)] of a batch's real examples, sorted."""
  keep = batch['mask'] == 1 if 'mask' in batch else np.ones(len(batch['label']), bool)
  colours = np.round((batch['image'][keep, 0, 0, 0] + 1) * 127.5).astype(int)
  return sorted(zip(colours.tolist(), batch['label'][keep].tolist()))


def _one_epoch(cfg, num_train):
  batches = input_pipeline.train_iterator(cfg, global_batch_size=num_train, seed=0, start_step=0,
                                          process_index=0, process_count=1)
  return _colours_and_labels(next(batches))


def test_only_visible_folders_with_images_are_classes(tmp_path, caplog):
  root = tmp_path / 'pool'
  _images(root / 'a', [10, 20, 30])
  _images(root / 'b', [100, 110, 120], 'jpg')
  _images(root, [5])  # A stray image beside the classes: in no class (nor through 'loop').
  _images(tmp_path / 'elsewhere' / 'c', [200, 210, 220])
  os.symlink(tmp_path / 'elsewhere' / 'c', root / 'c')  # Images stored elsewhere: a class.
  _images(root / '.ipynb_checkpoints', [250])            # Hidden, though it holds an image.
  (root / 'empty').mkdir()
  (root / 'notes').mkdir()
  (root / 'notes' / 'readme.txt').write_text('no images here')
  os.symlink(root, root / 'loop')                        # The folder itself.
  os.symlink(tmp_path, root / 'up')                      # A parent.
  os.symlink(root / 'a', root / 'alias')                 # a's images under a second label.
  os.symlink(root / 'cycle', root / 'cycle')             # A symlink loop.
  cfg = _config(root)
  assert input_pipeline.get_dataset_info(cfg) == (3, 6, 3)
  (warning,) = _warnings(caplog, 'not classes')
  no_images = 'no .jpg/.jpeg/.png/.bmp/.gif files'
  for name, why in [('.ipynb_checkpoints', 'hidden'), ('empty', no_images), ('notes', no_images),
                    ('loop', 'a symlink to the folder or a parent'),
                    ('up', 'a symlink to the folder or a parent'),
                    ('alias', "a symlink to the same folder as 'a'"),
                    ('cycle', 'a broken or cyclic symlink')]:
    assert f"'{name}' ({why})" in warning, warning
  assert '3 class(es): a, b, c.' in warning
  train = _one_epoch(cfg, 6)
  (ev,) = input_pipeline.eval_iterator(cfg, global_batch_size=4, process_index=0,
                                       process_count=1)
  every = train + _colours_and_labels(ev)
  assert [label for _, label in every] == [c // 100 for c, _ in every]  # a: 0, b: 1, c: 2.
  assert np.allclose(sorted(c for c, _ in every), [10, 20, 30, 100, 110, 120, 200, 210, 220],
                     atol=3)  # JPEG is lossy.


def test_split_folders_skip_them_too_and_training_is_told_the_real_class_count(tmp_path, caplog):
  root = tmp_path / 'splits'
  _images(root / 'train' / 'cat', [10, 20, 30])
  _images(root / 'train' / 'dog', [100, 110, 120])
  _images(root / 'train' / '.ipynb_checkpoints', [250])
  (root / 'train' / 'empty').mkdir()
  os.symlink(root, root / 'train' / 'to_root')
  _images(root / 'validation' / 'dog', [130])
  _images(root / 'validation' / '.ipynb_checkpoints', [250])  # Not an unknown class.
  cfg = _config(root)
  assert input_pipeline.get_dataset_info(cfg) == (2, 6, 1)
  assert _one_epoch(cfg, 6) == [(10, 0), (20, 0), (30, 0), (100, 1), (110, 1), (120, 1)]
  (ev,) = input_pipeline.eval_iterator(cfg, global_batch_size=1, process_index=0,
                                       process_count=1)
  assert _colours_and_labels(ev) == [(130, 1)]
  (warning,) = _warnings(caplog, f'{root / "train"}: 3 subfolders are not classes')
  for name in ['.ipynb_checkpoints', 'empty', 'to_root']:
    assert f"'{name}'" in warning, warning
  config = tiny_config(tmp_path, **{'data.dataset': 'image_folder', 'data.data_dir': str(root),
                                    'data.eval_split': 'validation', 'model.num_classes': 5})
  with pytest.raises(ValueError, match=re.escape('has 2 classes; set '
                                                 '--config.model.num_classes=2.')):
    preflight.check_config(config, str(tmp_path / 'w'), sharding.make_mesh())


@pytest.mark.parametrize('layout', ['pool', 'splits'])
def test_fewer_than_two_classes_is_an_error(tmp_path, layout):
  folder = tmp_path if layout == 'pool' else tmp_path / 'train'
  _images(folder / 'only', [10, 20, 30])
  _images(folder / '.hidden', [40])
  (folder / 'empty').mkdir()
  if layout == 'splits':
    _images(tmp_path / 'validation' / 'only', [50])
  cfg = _config(tmp_path)
  for call in (lambda: input_pipeline.get_dataset_info(cfg),
               lambda: input_pipeline.train_iterator(cfg, global_batch_size=2, seed=0,
                                                     start_step=0, process_index=0,
                                                     process_count=1)):
    with pytest.raises(ValueError) as error:
      call()
    message = str(error.value)
    for text in [f'{folder} has 1 class', "['only']", 'at least 2 class folders', "'.hidden'",
                 "'empty'", '.jpg/.jpeg/.png/.bmp/.gif']:
      assert text in message, message


def test_images_over_the_pixel_limit_are_skipped_and_counted(tmp_path, caplog):
  _images(tmp_path / 'a', [10, 20, 30])
  _images(tmp_path / 'b', [100, 110, 120])
  Image.new('1', (5000, 5000), 1).save(tmp_path / 'b' / 'huge.png')  # White: 25 M pixels.
  # Three 700x700 frames: 1.47 M pixels, which tf.io.decode_image decodes all of.
  frames = [Image.new('L', (700, 700), v) for v in (250, 251, 252)]
  frames[0].save(tmp_path / 'a' / 'anim.gif', save_all=True, append_images=frames[1:])
  small = Image.new('L', (700, 700), 240)  # 0.49 M pixels: within the limit.
  small.save(tmp_path / 'a' / 'still.gif')
  cfg = _config(tmp_path, max_image_pixels=1_000_000)
  assert input_pipeline.get_dataset_info(cfg) == (2, 5, 2)
  (warning,) = _warnings(caplog, 'skipped')
  assert 'skipped 2 of 9 files' in warning and 'Training on the 7 others' in warning, warning
  assert '2 over max_image_pixels=1000000' in warning and 'huge.png' in warning, warning
  train = _one_epoch(cfg, 5)
  (ev,) = input_pipeline.eval_iterator(cfg, global_batch_size=2, process_index=0,
                                       process_count=1)
  assert sorted(train + _colours_and_labels(ev)) == [
      (10, 0), (20, 0), (30, 0), (100, 1), (110, 1), (120, 1), (240, 0)]


_PROBE = """
import json, sys
from mnv3_jax.data import input_pipeline

def info(root):
  cfg = input_pipeline.default_data_config()
  cfg.update(dict(dataset='image_folder', data_dir=root, folder_holdout_fraction=1 / 3))
  return list(input_pipeline.get_dataset_info(cfg))

def memory_mb(field):
  with open('/proc/self/status') as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024

small = info(sys.argv[1])
with open('/proc/self/clear_refs', 'w') as f:
  f.write('5')  # The peak resident size restarts from the current one.
before = memory_mb('VmHWM:')
big = info(sys.argv[2])
print(json.dumps([small, big, before, memory_mb('VmHWM:')]))
"""


def test_an_image_over_the_default_limit_is_never_decoded(tmp_path):
  """10000 x 10000 (100 M pixels; the default limit is 40 M), 12 kB as a 1-bit PNG, 300 MB decoded
  as RGB: listing its folder (in a fresh process, after listing a like folder without it) leaves
  the peak resident memory where it was (Linux: /proc/self/clear_refs restarts the peak)."""
  for name in ('small', 'big'):
    _images(tmp_path / name / 'a', [10, 20, 30])
    _images(tmp_path / name / 'b', [100, 110, 120])
  Image.new('1', (10000, 10000), 1).save(tmp_path / 'big' / 'b' / 'huge.png')
  out = subprocess.run([sys.executable, '-c', _PROBE, str(tmp_path / 'small'),
                        str(tmp_path / 'big')], cwd=_ROOT, capture_output=True, text=True,
                       check=True, timeout=300)
  small, big, before, after = json.loads(out.stdout.strip().splitlines()[-1])
  assert after - before < 100, f'listing the folder raised the peak memory {after - before:.0f} MB'
  assert big == small == [2, 4, 2]


@pytest.mark.parametrize('value', [0, -5, 2.5, '40M', None, True])
def test_a_bad_max_image_pixels_is_named(tmp_path, imagenet_dir, value):
  """For an image folder when it is listed, and for any dataset when the pipeline starts."""
  _images(tmp_path / 'a', [10, 20, 30])
  _images(tmp_path / 'b', [100, 110, 120])
  cfg = ml_collections.ConfigDict({**_config(tmp_path).to_dict(), 'max_image_pixels': value})
  tfds_cfg = ml_collections.ConfigDict({**cfg.to_dict(), 'dataset': 'imagenet2012',
                                        'data_dir': imagenet_dir})
  for call in (lambda: input_pipeline.get_dataset_info(cfg),
               lambda: input_pipeline.eval_iterator(tfds_cfg, global_batch_size=2,
                                                    process_index=0, process_count=1)):
    with pytest.raises(ValueError, match=re.escape(f'max_image_pixels={value!r} is invalid: '
                                                   'need an int >= 1')):
      call()


def test_a_config_from_before_max_image_pixels_reads_with_the_default(tmp_path):
  _images(tmp_path / 'a', [10, 20, 30])
  _images(tmp_path / 'b', [100, 110, 120])
  old = _config(tmp_path).to_dict()
  del old['max_image_pixels']
  assert input_pipeline.get_dataset_info(ml_collections.ConfigDict(old)) == (2, 4, 2)
