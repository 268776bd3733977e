"""mnv3_jax/tasks/segmentation/data.py and data_sources.py: aligned augmentation, process shards,
eval padding, the known datasets' label mappings and clear errors."""
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mnv3_jax.tasks.segmentation import data
from mnv3_jax.tasks.segmentation import data_sources
from mnv3_jax.tasks.segmentation import scenes

IGNORE = 255
PALETTE = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220]], np.uint8)   # class -> colour


def config(**overrides):
  cfg = data.default_data_config()
  cfg.update(overrides)
  return cfg


def coded_pair(rng, height, width, block=8):
  """(image, mask): 8x8 blocks of random classes 0..2 (some blocks ignored), each pixel coloured
  by its class (ignored: grey), so the image tells every pixel's label."""
  blocks = rng.integers(0, 3, (-(-height // block), -(-width // block)))
  blocks[rng.random(blocks.shape) < 0.1] = IGNORE
  mask = np.kron(blocks, np.ones((block, block), int))[:height, :width].astype(np.uint8)
  image = np.where(mask[..., None] == IGNORE, 128, PALETTE[np.minimum(mask, 2)]).astype(np.uint8)
  return image, mask


def write_folder(root, split, sizes, seed=0, ext='.png'):
  """root/split/images/NAME.ext and masks/NAME.png of `coded_pair`s of the (h, w) sizes."""
  rng = np.random.default_rng(seed)
  for kind in ('images', 'masks'):
    (root / split / kind).mkdir(parents=True, exist_ok=True)
  for i, (h, w) in enumerate(sizes):
    image, mask = coded_pair(rng, h, w)
    Image.fromarray(image).save(root / split / 'images' / f'ex{i:03d}{ext}')
    Image.fromarray(mask).save(root / split / 'masks' / f'ex{i:03d}.png')


def folder_config(root, **overrides):
  return config(**{'dataset': 'seg_folder', 'data_dir': str(root), 'num_classes': 3,
                   'eval_split': 'val', **overrides})


def test_augmentation_keeps_image_and_mask_aligned(tmp_path):
  write_folder(tmp_path, 'train', [(48, 40), (40, 72), (64, 64), (33, 50)])
  cfg = folder_config(tmp_path, crop_size=32, scale_range=(0.5, 2.0), random_flip=True)
  it = data.train_iterator(cfg, global_batch_size=16, seed=3, start_step=0, process_index=0,
                           process_count=1)
  batches = [next(it) for _ in range(4)]
  images = np.concatenate([b['image'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  assert images.shape == (64, 32, 32, 3) and labels.shape == (64, 32, 32)
  assert labels.dtype == np.int32 and images.dtype == np.float32
  raw = (images + 1) * 127.5
  distance = np.linalg.norm(raw[..., None, :] - PALETTE.astype(np.float32), axis=-1)
  decoded = np.argmin(distance, -1)
  scored = labels != IGNORE
  # Away from block edges (where bilinear blends colours) the colour names the label exactly.
  padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)), mode='edge')
  uniform = np.all([padded[:, 1 + dy:33 + dy, 1 + dx:33 + dx] == labels
                    for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
  inner = scored & uniform
  assert inner.mean() > 0.3
  assert (decoded[inner] == labels[inner]).all()
  assert (decoded[scored] == labels[scored]).mean() > 0.95
  # Padding (scaled images smaller than the crop): image 0 (-1 after scaling), mask ignored.
  black = np.all(images == -1.0, axis=-1)
  assert black.any() and (labels[black] == IGNORE).all()
  # The flips, scales and crops vary: the same record gives different crops over epochs.
  assert len({im.tobytes() for im in images}) == len(images)


def test_train_shards_are_disjoint_cover_the_split_and_resume(seg_shapes_dir):
  cfg = config(data_dir=str(seg_shapes_dir), train_split='train[:40]', scale_range=(1.0, 1.0),
               random_flip=False)   # an identity transform: crops are the stored images
  def first_epoch(process):
    it = data.train_iterator(cfg, global_batch_size=8, seed=0, start_step=0,
                             process_index=process, process_count=2)
    return np.concatenate([next(it)['image'] for _ in range(5)])   # 20 examples a process
  shards = [first_epoch(p) for p in (0, 1)]
  seen = [{np.round((im + 1) * 127.5).astype(np.uint8).tobytes() for im in s} for s in shards]
  assert len(seen[0]) == len(seen[1]) == 20 and not seen[0] & seen[1]
  stored = {ex['image'].tobytes() for ex in tfds.as_numpy(
      tfds.builder(scenes.NAME, data_dir=seg_shapes_dir).as_dataset(split='train[:40]'))}
  assert seen[0] | seen[1] == stored
  # start_step=k yields batch k of a run from 0.
  cfg.update(scale_range=(0.5, 2.0), random_flip=True)
  run = data.train_iterator(cfg, global_batch_size=8, seed=1, start_step=0, process_index=1,
                            process_count=2)
  later = [next(run) for _ in range(7)][-1]
  resumed = next(data.train_iterator(cfg, global_batch_size=8, seed=1, start_step=6,
                                     process_index=1, process_count=2))
  np.testing.assert_array_equal(resumed['image'], later['image'])
  np.testing.assert_array_equal(resumed['label'], later['label'])


def test_eval_padding_is_masked_and_every_example_counted_once(seg_shapes_dir):
  cfg = config(data_dir=str(seg_shapes_dir), eval_split='test[:37]')
  stored = {ex['image'].tobytes(): ex['segmentation_mask'][..., 0] for ex in tfds.as_numpy(
      tfds.builder(scenes.NAME, data_dir=seg_shapes_dir).as_dataset(split='test[:37]'))}
  real, counts = {}, []
  for process in range(3):   # shards 13, 12, 12; batches of 4: 4 batches each, 15 padded slots
    batches = list(data.eval_iterator(cfg, global_batch_size=12, process_index=process,
                                      process_count=3))
    counts.append(len(batches))
    for b in batches:
      assert b['image'].shape == (4, 64, 64, 3) and b['mask'].dtype == np.float32
      for image, label, mask in zip(b['image'], b['label'], b['mask']):
        if mask == 0:
          assert (label == IGNORE).all()   # padding scores nothing, even without the mask
          continue
        key = np.round((image + 1) * 127.5).astype(np.uint8).tobytes()
        assert key not in real
        real[key] = label
  assert counts == [4, 4, 4] and len(real) == 37 and set(real) == set(stored)
  for key, label in real.items():
    np.testing.assert_array_equal(label, stored[key])   # full resolution, exact labels


def test_eval_sizes_full_resolution_or_padded(tmp_path):
  write_folder(tmp_path, 'val', [(48, 40), (40, 72), (20, 24)], ext='.jpg')
  cfg = folder_config(tmp_path, eval_size=64)
  (batch,) = data.eval_iterator(cfg, global_batch_size=4, process_index=0, process_count=1)
  assert batch['image'].shape == (4, 64, 64, 3) and list(batch['mask']) == [1, 1, 1, 0]
  for label, mask in zip(batch['label'], batch['mask']):
    h, w = ((label != IGNORE).any(1).nonzero()[0].max() + 1,
            (label != IGNORE).any(0).nonzero()[0].max() + 1) if mask else (0, 0)
    assert (label[h:] == IGNORE).all() and (label[:, w:] == IGNORE).all()
  fitted = data.eval_iterator(folder_config(tmp_path, eval_size=36), global_batch_size=4,
                              process_index=0, process_count=1)
  assert next(fitted)['label'].shape == (4, 36, 36)   # 40x72 -> 20x36, then padded
  with pytest.raises(ValueError, match='differ in size and config.data.eval_size is None'):
    list(data.eval_iterator(folder_config(tmp_path), global_batch_size=4, process_index=0,
                            process_count=1))


def test_known_datasets_map_their_mask_values(tmp_path):
  features = tfds.builder('oxford_iiit_pet').info.features
  masks = np.array([[1, 2, 3, 0]], np.uint8)[..., None]   # pet, background, border, no value
  example = {'image': np.zeros((1, 4, 3), np.uint8), 'segmentation_mask': masks, 'label': 0,
             'species': 0, 'file_name': 'a.jpg', 'head_bbox': np.zeros(4, np.float32)}
  tfds.dataset_builders.store_as_tfds_dataset(
      name='oxford_iiit_pet', version='4.0.0', features=features, data_dir=str(tmp_path),
      split_datasets={'train': [(0, example)], 'test': [(0, example)]},
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  cfg = config(dataset='oxford_iiit_pet', data_dir=str(tmp_path))
  assert data.get_dataset_info(cfg) == data.DatasetInfo(3, IGNORE, 1, 1)
  (batch,) = data.eval_iterator(cfg, global_batch_size=1, process_index=0, process_count=1)
  assert batch['label'].tolist() == [[[1, 0, 2, IGNORE]]]
  city = data_sources.KNOWN['cityscapes']
  assert (city.classes[7], city.classes[26], city.classes[33], len(city.classes)) == (0, 13, 18, 19)
  assert 0 not in data_sources.KNOWN['scene_parse150'].classes   # 'other' is ignored
  assert data_sources.KNOWN['scene_parse150'].classes[150] == 149


def test_folder_errors_name_the_bad_files(tmp_path):
  write_folder(tmp_path, 'train', [(16, 16)] * 3)
  (tmp_path / 'train' / 'masks' / 'ex001.png').rename(tmp_path / 'train' / 'masks' / 'other.png')
  with pytest.raises(ValueError, match=r"images without a mask: \['ex001'\], masks without an "
                                       r"image: \['other'\]"):
    data.get_dataset_info(folder_config(tmp_path, eval_split='train'))
  write_folder(tmp_path, 'val', [(16, 16)])
  Image.new('RGB', (16, 16)).save(tmp_path / 'val' / 'masks' / 'ex000.png')
  with pytest.raises(ValueError, match=r'ex000.png \(mode RGB.*one-channel PNG'):
    data_sources.split_size(folder_config(tmp_path), 'val')
  with pytest.raises(ValueError, match=r"no folder \[.*nope/images"):
    data_sources.split_size(folder_config(tmp_path), 'nope')


def test_mask_values_beyond_the_classes_stop_the_pipeline(tmp_path):
  write_folder(tmp_path, 'val', [(16, 16)])
  Image.fromarray(np.full((16, 16), 7, np.uint8)).save(tmp_path / 'val' / 'masks' / 'ex000.png')
  with pytest.raises(Exception, match='ex000.png.*holds values other than classes 0..2'):
    list(data.eval_iterator(folder_config(tmp_path), global_batch_size=1, process_index=0,
                            process_count=1))


@pytest.mark.parametrize('overrides, error, match', [
    (dict(dataset='voc'), ValueError, r"dataset='voc' is not a known.*'seg_shapes'.*'seg_folder'"),
    (dict(crop_size=0), ValueError, 'crop_size=0'),
    (dict(scale_range=(2.0, 1.0)), ValueError, r'scale_range=\(2.0, 1.0\)'),
    (dict(scale_range=(0.5, 1.0, 2.0)), ValueError, r'scale_range=\(0.5, 1.0, 2.0\)'),
    (dict(ignore_label=2), ValueError, 'ignore_label=2 is invalid: need a value that is no class'),
    (dict(num_classes=5), ValueError, 'num_classes=5 is invalid for .seg_shapes., which has 4'),
    (dict(eval_size=-1), ValueError, 'eval_size=-1'),
    (dict(dataset='seg_folder', data_dir='/x'), ValueError, "num_classes=None is invalid"),
    (dict(dataset='cityscapes'), FileNotFoundError, 'manual download'),
])
def test_bad_configs_are_named(overrides, error, match, tmp_path):
  with pytest.raises(error, match=match):
    data.get_dataset_info(config(**{'data_dir': str(tmp_path), **overrides}))
