"""Where segmentation examples come from: known TFDS datasets, a folder of pairs, 'seg_shapes'.

Known TFDS datasets (`KNOWN`; prepared beforehand in data_dir, never downloaded here) and how their
stored mask values become classes (any value not listed becomes the ignore label):
- 'seg_shapes' (scenes.py; written into data_dir on first use): 0 background, 1 disk,
  2 rectangle, 3 triangle; splits train/test.
- 'oxford_iiit_pet' (segmentation_mask, the trimap): 2 (background) -> 0, 1 (pet) -> 1,
  3 (border, the outline between them) -> 2, as in TensorFlow's segmentation tutorial (value - 1,
  reordered so that background is 0); splits train/test.
- 'scene_parse150' (ADE20K's 150 classes, `annotation`): v -> v - 1 for v in 1..150; 0 ('other',
  unlabelled) is ignored (mmsegmentation's reduce_zero_label, the benchmark's rule); splits
  train/test (test holds ADE20K's validation images).
- 'cityscapes' (manual download, builder 'cityscapes/semantic_segmentation'; `image_left`,
  `segmentation_label` with the 34 label ids): the 19 train ids of cityscapesScripts' labels.py
  (7 road -> 0, 8 sidewalk, 11 building, 12 wall, 13 fence, 17 pole, 19 traffic light,
  20 traffic sign, 21 vegetation, 22 terrain, 23 sky, 24 person, 25 rider, 26 car, 27 truck,
  28 bus, 31 train, 32 motorcycle, 33 bicycle -> 18), every other id ignored; splits
  train/validation/test (test labels are not public).
'seg_folder' (`FOLDER`): data_dir/<split>/images/NAME.(jpg|jpeg|png) with
data_dir/<split>/masks/NAME.png, paired by NAME; a mask is a one-channel PNG (mode L, P or 1: a
palette PNG gives its palette indices) of the image's size whose values are classes
0..num_classes-1 or the ignore label (other values stop the pipeline with an error naming the
file). Every pair's headers are read when the folder is first listed; unpaired files, colour
masks and size mismatches are a ValueError naming them. Files are read through tf.io.gfile
(gs:// works).
"""
import functools
import os
from typing import Callable, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from mnv3_jax.tasks.segmentation import scenes

FOLDER = 'seg_folder'
_IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
_MASK_MODES = ('L', 'P', '1')
_CITYSCAPES_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


class Known(NamedTuple):
  """A TFDS segmentation dataset: its features and how stored mask values become classes."""
  tfds_name: str
  image_key: str
  mask_key: str
  num_classes: int
  classes: dict       # stored mask value -> class; any other value is ignored
  eval_split: str     # the split with public labels to evaluate on


KNOWN = {
    scenes.NAME: Known(scenes.NAME, 'image', 'segmentation_mask', len(scenes.CLASSES),
                       {i: i for i in range(len(scenes.CLASSES))}, 'test'),
    'oxford_iiit_pet': Known('oxford_iiit_pet', 'image', 'segmentation_mask', 3,
                             {2: 0, 1: 1, 3: 2}, 'test'),
    'scene_parse150': Known('scene_parse150', 'image', 'annotation', 150,
                            {v: v - 1 for v in range(1, 151)}, 'test'),
    'cityscapes': Known('cityscapes/semantic_segmentation', 'image_left', 'segmentation_label', 19,
                        {v: i for i, v in enumerate(_CITYSCAPES_IDS)}, 'validation'),
}
NAMES = tuple(KNOWN) + (FOLDER,)


class Source(NamedTuple):
  """One process's shard of a split, undecoded.

  records: (image, mask) string records (encoded bytes or file paths), the same order every time.
  read: (image, mask) records -> (image uint8 (h, w, 3), mask int32 (h, w) of classes and the
    ignore label); usable inside `tf.data` maps.
  shard_sizes: the number of records of every process's shard (index = process index).
  shape: (h, w) of every image of the dataset when the dataset fixes it, else None.
  """
  records: tf.data.Dataset
  read: Callable
  shard_sizes: Tuple[int, ...]
  shape: Optional[Tuple[int, int]]


def even_shard_sizes(n: int, count: int) -> Tuple[int, ...]:
  """Sizes of `tfds.even_splits(split, count)` for a split of n examples (the first get the rest)."""
  return tuple(n // count + (1 if i < n % count else 0) for i in range(count))


def check_dataset(name) -> None:
  """Raises ValueError unless `name` is a known dataset or FOLDER."""
  if name not in NAMES:
    raise ValueError(f'config.data.dataset={name!r} is not a known segmentation dataset; '
                     f'allowed: {list(NAMES)}.')


def _builder(cfg) -> tfds.core.DatasetBuilder:
  known = KNOWN[cfg.dataset]
  if cfg.dataset == scenes.NAME:
    return scenes.prepare(cfg.data_dir)
  builder = tfds.builder(known.tfds_name, data_dir=cfg.data_dir)
  if not builder.is_prepared():
    root = os.fspath(builder.data_dir_root)
    manual = (f' Cityscapes needs a manual download: leftImg8bit_trainvaltest.zip and '
              f'gtFine_trainvaltest.zip (https://www.cityscapes-dataset.com) into '
              f'{os.path.join(root, "downloads", "manual")}.' if cfg.dataset == 'cityscapes' else '')
    raise FileNotFoundError(
        f'TFDS dataset {known.tfds_name!r} is not prepared in data_dir={root}.{manual} Prepare it '
        f'first (`tfds build {known.tfds_name} --data_dir={root}`), then set '
        f'config.data.data_dir="{root}".')
  return builder


def _split_size(builder, split: str) -> int:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError, AssertionError) as e:
    raise ValueError(f'Split {split!r} is not valid for dataset {builder.name!r}, whose splits are '
                     f'{list(builder.info.splits)}: {e}') from e


def _header(path: str) -> Tuple[str, Tuple[int, int]]:
  """(mode, (width, height)) of an image file; reads only its header."""
  with tf.io.gfile.GFile(path, 'rb') as f, Image.open(f) as image:
    return image.mode, image.size


@functools.lru_cache(maxsize=8)
def _folder_pairs(root: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
  """(image paths, mask paths) of data_dir/<split>, checked, in a fixed shuffled order."""
  folders = {kind: os.path.join(root, split, kind) for kind in ('images', 'masks')}
  missing = [f for f in folders.values() if not tf.io.gfile.isdir(f)]
  if missing:
    raise ValueError(f'{FOLDER} split {split!r}: no folder {missing}; allowed layout: '
                     f'data_dir/<split>/images/NAME.jpg|png with data_dir/<split>/masks/NAME.png.')
  found = {}
  for kind, extensions in (('images', _IMAGE_EXTENSIONS), ('masks', ('.png',))):
    stems = {}
    for f in sorted(tf.io.gfile.listdir(folders[kind])):
      stem, ext = os.path.splitext(f)
      if ext.lower() in extensions and not f.startswith('.'):
        if stem in stems:
          raise ValueError(f'{folders[kind]}: {stems[stem]!r} and {f!r} share the name {stem!r}; '
                           'allowed: one file per name.')
        stems[stem] = f
    found[kind] = stems
  images, masks = found['images'], found['masks']
  unpaired = {kind: sorted(set(found[kind]) - set(found[other]))
              for kind, other in (('images', 'masks'), ('masks', 'images'))}
  if any(unpaired.values()) or not images:
    raise ValueError(f'{FOLDER} split {split!r} of {root}: every image needs a mask of the same '
                     f'name and vice versa; {len(images)} images, {len(masks)} masks; images '
                     f'without a mask: {unpaired["images"][:5]}, masks without an image: '
                     f'{unpaired["masks"][:5]} (first 5 each).')
  pairs = [(os.path.join(folders['images'], images[s]), os.path.join(folders['masks'], masks[s]))
           for s in sorted(images)]
  for image_path, mask_path in pairs:
    (mode, size), (_, image_size) = _header(mask_path), _header(image_path)
    if mode not in _MASK_MODES or size != image_size:
      raise ValueError(f'Mask {mask_path} (mode {mode}, width x height {size}) does not fit '
                       f'{image_path} ({image_size}); allowed: a one-channel PNG (mode '
                       f'{"/".join(_MASK_MODES)}) of the image\'s size.')
  order = np.random.default_rng(1).permutation(len(pairs))   # mixes the names across shards
  paths = np.asarray(pairs)[order]
  return paths[:, 0], paths[:, 1]


def _folder(cfg, split: str):
  if not cfg.data_dir:
    raise ValueError(f'config.data.data_dir={cfg.data_dir!r} is invalid: dataset={FOLDER!r} needs '
                     'the folder holding <split>/images and <split>/masks.')
  return _folder_pairs(os.fspath(cfg.data_dir), split)


def split_size(cfg, split: str) -> int:
  """The number of examples of `split` of the configured dataset."""
  check_dataset(cfg.dataset)
  if cfg.dataset == FOLDER:
    return len(_folder(cfg, split)[0])
  return _split_size(_builder(cfg), split)


def num_classes(cfg) -> int:
  """The classes of the configured dataset (FOLDER: config.data.num_classes, required)."""
  check_dataset(cfg.dataset)
  want = cfg.get('num_classes')
  if cfg.dataset == FOLDER:
    if isinstance(want, bool) or not isinstance(want, int) or want < 1:
      raise ValueError(f'config.data.num_classes={want!r} is invalid: dataset={FOLDER!r} needs '
                       'the number of classes (an int >= 1).')
    return want
  have = KNOWN[cfg.dataset].num_classes
  if want is not None and want != have:
    raise ValueError(f'config.data.num_classes={want!r} is invalid for {cfg.dataset!r}, which has '
                     f'{have} classes; allowed: None or {have}.')
  return have


def _decode_image(encoded):
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def _read_mask_file(path) -> np.ndarray:
  with tf.io.gfile.GFile(path.decode(), 'rb') as f, Image.open(f) as mask:
    return np.asarray(mask, np.int32)


def open_split(cfg, split: str, process_index: int, process_count: int) -> Source:
  """This process's contiguous shard of `split` (as `tfds.even_splits`: sizes differ by <= 1)."""
  check_dataset(cfg.dataset)
  ignore, classes = int(cfg.ignore_label), num_classes(cfg)
  if cfg.dataset == FOLDER:
    images, masks = _folder(cfg, split)
    sizes = even_shard_sizes(len(images), process_count)
    start = sum(sizes[:process_index])
    shard = slice(start, start + sizes[process_index])

    def read_pair(image_path, mask_path):
      mask = tf.numpy_function(_read_mask_file, [mask_path], tf.int32, stateful=False)
      mask = tf.ensure_shape(mask, [None, None])
      ok = tf.reduce_all((mask >= 0) & ((mask < classes) | (mask == ignore)))
      with tf.control_dependencies([tf.debugging.Assert(ok, [
          mask_path, f'holds values other than classes 0..{classes - 1} and the ignore label '
          f'{ignore}; its values:', tf.unique(tf.reshape(mask, [-1]))[0]], summarize=20)]):
        return _decode_image(tf.io.read_file(image_path)), tf.identity(mask)

    records = tf.data.Dataset.from_tensor_slices((images[shard], masks[shard]))
    return Source(records, read_pair, sizes, None)
  known, builder = KNOWN[cfg.dataset], _builder(cfg)
  _split_size(builder, split)
  table = np.full(256, ignore, np.int32)
  for value, cls in known.classes.items():
    table[value] = cls
  table = tf.constant(table)

  def read(image, mask):
    stored = tf.io.decode_png(mask, channels=0)[..., 0]   # scene_parse150 stores 3 equal channels
    return _decode_image(image), tf.gather(table, tf.cast(stored, tf.int32))

  shards = tfds.even_splits(split, process_count)
  sizes = tuple(builder.info.splits[s].num_examples for s in shards)
  shape = builder.info.features[known.image_key].shape[:2]
  shape = tuple(shape) if None not in shape else None
  if not sizes[process_index]:  # More processes than examples; TFDS refuses empty reads.
    empty = tf.constant([], tf.string)
    return Source(tf.data.Dataset.from_tensor_slices((empty, empty)), read, sizes, shape)
  skip = {known.image_key: tfds.decode.SkipDecoding(), known.mask_key: tfds.decode.SkipDecoding()}
  records = builder.as_dataset(split=shards[process_index], shuffle_files=False, decoders=skip,
                               read_config=tfds.ReadConfig(try_autocache=False))
  records = records.map(lambda ex: (ex[known.image_key], ex[known.mask_key]))
  return Source(records, read, sizes, shape)
