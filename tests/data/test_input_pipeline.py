"""The input pipeline on real on-disk data: a tiny `imagenet2012` that plain tfds reads, image
folders, and the embedded digits. Examples are identified by their label (unique per example in the
imagenet2012 stand-in) or by their constant colour (image folders)."""
import os
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from mnv3_jax.data import input_pipeline

from tests.support import NUM_EVAL, NUM_TRAIN


def _config(data_dir, **overrides):
  cfg = input_pipeline.default_data_config()
  cfg.data_dir = data_dir
  cfg.update(dict(image_size=16, shuffle_buffer=64, num_parallel_calls=2), **overrides)
  return cfg


def _train(cfg, steps, batch=8, seed=0, start_step=0, process_index=0, process_count=1):
  batches = input_pipeline.train_iterator(
      cfg, global_batch_size=batch, seed=seed, start_step=start_step,
      process_index=process_index, process_count=process_count)
  return [next(batches) for _ in range(steps)]


def _eval(cfg, batch, process_index=0, process_count=1):
  return list(input_pipeline.eval_iterator(
      cfg, global_batch_size=batch, process_index=process_index, process_count=process_count))


def test_imagenet_batches_have_the_promised_shapes_values_and_labels(imagenet_dir):
  cfg = _config(imagenet_dir)
  assert input_pipeline.get_dataset_info(cfg) == (1000, NUM_TRAIN, NUM_EVAL)
  batches = _train(cfg, steps=4)
  for b in batches:
    assert b['image'].shape == (8, 16, 16, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (8,) and b['label'].dtype == np.int32
    assert -1 <= b['image'].min() < -0.5 and 0.5 < b['image'].max() <= 1
  labels = np.concatenate([b['label'] for b in batches])
  assert len(set(labels)) == 32 and set(labels) <= set(range(NUM_TRAIN))  # No repeat in an epoch.
  ev = _eval(cfg, batch=4)
  assert [b['image'].shape for b in ev] == [(4, 16, 16, 3)] * 3
  assert np.concatenate([b['mask'] for b in ev]).tolist() == [1] * NUM_EVAL + [0]
  assert sorted(np.concatenate([b['label'] for b in ev])[:NUM_EVAL]) == list(range(NUM_EVAL))


@pytest.mark.parametrize('start_step', [3, 5])
def test_resuming_yields_the_batches_an_uninterrupted_run_sees(imagenet_dir, start_step):
  cfg = _config(imagenet_dir, shuffle_buffer=16)  # A buffer smaller than the dataset.
  straight = _train(cfg, steps=10)  # 80 examples: epochs 0, 1 and part of 2.
  resumed = _train(cfg, steps=10 - start_step, start_step=start_step)
  for a, b in zip(straight[start_step:], resumed):
    np.testing.assert_array_equal(a['label'], b['label'])
    np.testing.assert_array_equal(a['image'], b['image'])
  epoch_of = np.concatenate([b['label'] for b in straight])
  assert sorted(epoch_of[:NUM_TRAIN]) == sorted(epoch_of[NUM_TRAIN:2 * NUM_TRAIN])
  assert not np.array_equal(epoch_of[:NUM_TRAIN], epoch_of[NUM_TRAIN:2 * NUM_TRAIN])
  other_seed = np.concatenate([b['label'] for b in _train(cfg, steps=4, seed=1)])
  assert not np.array_equal(other_seed, epoch_of[:32])


def test_cache_does_not_change_the_batches(imagenet_dir):
  plain, cached = (_train(_config(imagenet_dir, cache=c), steps=6) for c in (False, True))
  for a, b in zip(plain, cached):
    np.testing.assert_array_equal(a['image'], b['image'])


@pytest.mark.parametrize('process_count', [2, 3])
def test_train_shards_are_disjoint_and_cover_the_split(imagenet_dir, process_count):
  cfg = _config(imagenet_dir)
  shards = []
  for p in range(process_count):
    size = NUM_TRAIN // process_count + (p < NUM_TRAIN % process_count)
    batches = _train(cfg, steps=size // 2 + 1, batch=2 * process_count, process_index=p,
                     process_count=process_count)
    epoch0 = np.concatenate([b['label'] for b in batches])[:size]
    assert len(set(epoch0)) == size
    shards.append(set(epoch0))
  assert sum(len(s) for s in shards) == NUM_TRAIN and set.union(*shards) == set(range(NUM_TRAIN))


@pytest.mark.parametrize('process_count', [1, 2, 3])
@pytest.mark.parametrize('num_eval', [NUM_EVAL, 1])  # 1: some shards are empty.
def test_eval_counts_every_example_once_on_any_process_count(imagenet_dir, process_count,
                                                             num_eval):
  cfg = _config(imagenet_dir, eval_split=f'validation[:{num_eval}]')
  per_process = [_eval(cfg, batch=2 * process_count, process_index=p,
                       process_count=process_count) for p in range(process_count)]
  assert len({len(batches) for batches in per_process}) == 1
  real = []
  for batches in per_process:
    for b in batches:
      assert b['image'].shape == (2, 16, 16, 3) and b['mask'].shape == (2,)
      real += b['label'][b['mask'] == 1].tolist()
  split = tfds.builder('imagenet2012', data_dir=imagenet_dir).as_dataset(cfg.eval_split)
  assert sorted(real) == sorted(ex['label'] for ex in tfds.as_numpy(split))
  assert len(real) == num_eval


def _write_images(folder, colours, fmt='png', gray=False):
  """One constant-colour image per colour (sizes vary), in `folder`; returns the colours."""
  os.makedirs(folder, exist_ok=True)
  for i, c in enumerate(colours):
    mode, value = ('L', int(c)) if gray else ('RGB', (int(c),) * 3)
    Image.new(mode, (20 + 7 * i, 30 - i), value).save(os.path.join(folder, f'{i}.{fmt}'))


def _colours(batches):
  """Each real example's colour in [0, 255], from its (constant) image."""
  out = []
  for b in batches:
    keep = b['mask'] == 1 if 'mask' in b else np.ones(len(b['label']), bool)
    assert np.ptp(b['image'][keep], axis=(1, 2, 3)).max() < 0.05  # Constant: crops are the image.
    out += np.round((b['image'][keep, 0, 0, 0] + 1) * 127.5).astype(int).tolist()
  return out


def test_cache_keeps_the_images_in_memory(tmp_path):
  _write_images(tmp_path / 'train' / 'a', [10, 20, 30])
  _write_images(tmp_path / 'train' / 'b', [100, 110, 120])
  cfg = _config(str(tmp_path), dataset='image_folder', cache=True)
  batches = input_pipeline.train_iterator(cfg, global_batch_size=6, seed=0, start_step=0,
                                          process_index=0, process_count=1)
  first = _colours([next(batches)])
  shutil.rmtree(tmp_path / 'train')
  later = _colours([next(batches) for _ in range(20)])  # Past any prefetched batches.
  assert sorted(later) == sorted(first * 20)


def test_image_folder_with_split_subfolders(tmp_path):
  _write_images(tmp_path / 'train' / 'cat', [10, 20, 30], 'jpg')
  _write_images(tmp_path / 'train' / 'dog', [110, 120], 'png', gray=True)
  _write_images(tmp_path / 'validation' / 'dog', [200, 210, 220], 'png')
  cfg = _config(str(tmp_path), dataset='image_folder')
  assert input_pipeline.get_dataset_info(cfg) == (2, 5, 3)
  batches = _train(cfg, steps=5, batch=2)  # Two epochs.
  colours = _colours(batches)
  labels = np.concatenate([b['label'] for b in batches]).tolist()
  assert all(abs(c - (10 if l == 0 else 110)) <= 25 for c, l in zip(colours, labels))
  assert sorted(colours[:5]) == sorted(colours[5:])
  assert np.allclose(sorted(colours[:5]), [10, 20, 30, 110, 120], atol=2)  # JPEG is lossy.
  ev = _eval(cfg, batch=2)
  assert sorted(_colours(ev)) == [200, 210, 220]
  assert np.concatenate([b['label'] for b in ev]).tolist() == [1, 1, 1, 0]


def test_image_folder_pool_holds_out_a_stratified_fraction(tmp_path):
  _write_images(tmp_path / 'a', range(10, 20), 'png')
  _write_images(tmp_path / 'b', range(100, 110), 'png')
  cfg = _config(str(tmp_path), dataset='image_folder', folder_holdout_fraction=0.2)
  assert input_pipeline.get_dataset_info(cfg) == (2, 16, 4)
  ev = _eval(cfg, batch=4)
  held_out = _colours(ev)
  labels = np.concatenate([b['label'] for b in ev]).tolist()
  assert sorted(labels) == [0, 0, 1, 1]
  train = _colours(_train(cfg, steps=4, batch=4))
  assert sorted(train + held_out) == list(range(10, 20)) + list(range(100, 110))


@pytest.mark.parametrize('fmt', ['png', 'jpg'])
def test_central_eval_crop_and_whole_image_train_crop(tmp_path, fmt):
  rng = np.random.default_rng(0)
  os.makedirs(tmp_path / 'train' / 'x')
  path = tmp_path / 'train' / 'x' / f'0.{fmt}'
  # JPEG: full-resolution colour, so that a window decodes as in the whole image; JPEG decoders
  # differ by a few levels.
  options = {'subsampling': 0} if fmt == 'jpg' else {}
  Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(path, **options)
  image = np.asarray(Image.open(path))
  os.makedirs(tmp_path / 'validation')
  os.symlink(tmp_path / 'train' / 'x', tmp_path / 'validation' / 'x')
  _write_images(tmp_path / 'train' / 'y', [100])  # A second class (train only).
  cfg = _config(str(tmp_path), dataset='image_folder', image_size=8, eval_crop_fraction=0.5)
  (batch,) = _eval(cfg, batch=1)
  np.testing.assert_allclose(batch['image'][0], image[6:14, 4:12] / 127.5 - 1,
                             atol=(5 if fmt == 'jpg' else 1e-4) / 127.5)
  cfg.update(dict(crop_area_range=(1.0, 1.0), aspect_ratio_range=(0.8, 0.8), image_size=20))
  rows = {tuple(b['image'][0, 0, :, 0]) for b in _train(cfg, steps=24, batch=1)
          if b['label'][0] == 0}
  assert len(rows) == 2  # The whole image (no other crop has area 1), flipped or not.
  first, second = map(np.array, rows)
  np.testing.assert_array_equal(first, second[::-1])


def test_digits_builds_and_serves_the_embedded_dataset(tmp_path):
  cfg = _config(str(tmp_path), dataset='digits', eval_split='test', crop_area_range=(0.6, 1.0),
                random_flip=False)
  assert input_pipeline.get_dataset_info(cfg) == (10, 1497, 300)
  (batch,) = _train(cfg, steps=1, batch=32)
  assert batch['image'].shape == (32, 16, 16, 3) and batch['image'].dtype == np.float32
  np.testing.assert_array_equal(batch['image'][..., 0], batch['image'][..., 2])  # Gray as RGB.
  ev = _eval(cfg, batch=64)
  mask = np.concatenate([b['mask'] for b in ev])
  labels = np.concatenate([b['label'] for b in ev])[mask == 1]
  assert len(ev) == 5 and mask.sum() == 300 and np.bincount(labels).min() >= 29


def test_missing_imagenet_fails_with_instructions_and_downloads_nothing(tmp_path):
  cfg = _config(str(tmp_path))
  with pytest.raises(FileNotFoundError) as error:
    input_pipeline.get_dataset_info(cfg)
  message = str(error.value)
  assert str(tmp_path) in message and 'manual' in message and 'tfds build imagenet2012' in message
  assert not os.path.exists(tmp_path / 'downloads')


@pytest.mark.parametrize('field, value', [
    ('image_size', 0), ('crop_area_range', (0.5, 0.2)), ('aspect_ratio_range', (0.0, 1.0)),
    ('eval_crop_fraction', 1.5), ('shuffle_buffer', 0), ('dataset', '')])
def test_bad_config_values_are_named(imagenet_dir, field, value):
  cfg = _config(imagenet_dir)
  cfg[field] = value
  with pytest.raises(ValueError, match=field):
    _train(cfg, steps=1)


def test_bad_batch_and_split_are_named(imagenet_dir):
  with pytest.raises(ValueError, match='global_batch_size=9'):
    _train(_config(imagenet_dir), steps=1, batch=9, process_count=2)
  with pytest.raises(ValueError, match="'test'"):
    _eval(_config(imagenet_dir, eval_split='test'), batch=2)
