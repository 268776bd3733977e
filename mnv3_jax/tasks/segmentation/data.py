"""Segmentation input pipeline on tf.data: augmented training crops, full-resolution eval batches.

The data config (`default_data_config()`; the trainer reads it as `config.data`):
  dataset         'seg_shapes' (the embedded demo), 'oxford_iiit_pet', 'scene_parse150',
                  'cityscapes' or 'seg_folder'; data_sources.py says how masks become classes.
  data_dir        TFDS data dir (None: the TFDS default), or the root of a seg_folder.
  train_split, eval_split   split names (TFDS slicing allowed, e.g. 'train[:90%]'); eval_split
                  None means the dataset's labelled evaluation split ('validation' for
                  cityscapes, else 'test'); a seg_folder has data_dir/<split>/ folders.
  num_classes     None (the dataset's) or its number; required for seg_folder.
  ignore_label    the label of pixels not scored nor trained on (255); not a class.
  crop_size       side S of the square training crops, in pixels.
  scale_range     (lo, hi): training images are first resized by a factor drawn uniformly from it.
  random_flip     training: horizontal flip with probability 1/2.
  eval_size       None: evaluate at full resolution; every eval image must then have one size (the
                  demo and cityscapes do). An int E: images whose longer side exceeds E are resized
                  so that it is E (the metric then scores the resized mask), then every image is
                  padded at the bottom/right to E x E with ignored pixels; needed for datasets of
                  varying sizes (E = 512 holds every oxford_iiit_pet image at full resolution).
  shuffle_buffer, num_parallel_calls   as the classification pipeline's.

Training (per example): scale by s ~ U(scale_range) (image bilinear, mask nearest), pad at the
bottom/right to at least S x S (image 0, mask ignore_label), take a random S x S crop and flip it,
the image and mask stacked so that one crop and one flip move both. Determinism and sharding are
those of mnv3_jax/data/determinism.py: each process reads its `tfds.even_splits` shard; epoch e
shuffles it with a buffer seeded by (seed, process, e), record i of the endless sequence draws its
scale, crop and flip from stateless ops keyed on (seed, process, i); `start_step` resumes exactly.

Batches are numpy dicts: 'image' float32 (B, H, W, 3) in [-1, 1] (x / 127.5 - 1), 'label' int32
(B, H, W) of classes and ignore_label; eval batches add 'mask' float32 (B,): 1 for real examples,
0 for the padding that fills the last batch (whose labels are all ignore_label too).
"""
from typing import Iterator, NamedTuple

import ml_collections
import tensorflow as tf
from ml_collections import config_dict

from mnv3_jax import defaults
from mnv3_jax.data import determinism
from mnv3_jax.tasks.segmentation import data_sources

AUTOTUNE = tf.data.AUTOTUNE
DEFAULTS = defaults.SEGMENTATION_DATA


class DatasetInfo(NamedTuple):
  """What the trainer needs to know; example counts are per whole split."""
  num_classes: int
  ignore_label: int
  num_train_examples: int
  num_eval_examples: int


def default_data_config() -> ml_collections.ConfigDict:
  """The data config with every field at its default (module docstring)."""
  types = {'data_dir': str, 'eval_split': str, 'num_classes': int, 'eval_size': int}
  return ml_collections.ConfigDict({k: config_dict.placeholder(types[k]) if v is None else v
                                    for k, v in DEFAULTS.items()})


def _int(value, lo=1) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= lo


def check_config(cfg) -> None:
  """Raises ValueError naming the first bad field of `cfg` and what is allowed (no data read)."""
  def bad(field, allowed):
    raise ValueError(f'config.data.{field}={cfg.get(field)!r} is invalid: {allowed}.')
  data_sources.check_dataset(cfg.dataset)
  if not _int(cfg.crop_size):
    bad('crop_size', 'need an int >= 1')
  scales = cfg.scale_range
  if not (len(scales) == 2 and all(isinstance(v, (int, float)) for v in scales)
          and 0 < scales[0] <= scales[1]):
    bad('scale_range', 'need (lo, hi) with 0 < lo <= hi')
  if cfg.eval_size is not None and not _int(cfg.eval_size):
    bad('eval_size', 'need None (full resolution) or an int >= 1')
  if not _int(cfg.ignore_label, lo=-2**31):
    bad('ignore_label', 'need an int')
  classes = cfg.num_classes
  if classes is not None and not _int(classes):
    bad('num_classes', 'need None or an int >= 1')
  if 0 <= cfg.ignore_label < data_sources.num_classes(cfg):
    bad('ignore_label', 'need a value that is no class (e.g. 255)')
  if not _int(cfg.shuffle_buffer):
    bad('shuffle_buffer', 'need an int >= 1')
  if cfg.num_parallel_calls != AUTOTUNE and not _int(cfg.num_parallel_calls):
    bad('num_parallel_calls', f'need an int >= 1 or {AUTOTUNE} (AUTOTUNE)')


def eval_split(cfg) -> str:
  """config.data.eval_split, or the dataset's labelled evaluation split when it is None."""
  if cfg.eval_split is not None:
    return cfg.eval_split
  return 'test' if cfg.dataset == data_sources.FOLDER else data_sources.KNOWN[cfg.dataset].eval_split


def get_dataset_info(cfg) -> DatasetInfo:
  """Classes and split sizes (writes 'seg_shapes' on first use); errors as `check_config`, and
  FileNotFoundError for a TFDS dataset that is not prepared."""
  check_config(cfg)
  return DatasetInfo(data_sources.num_classes(cfg), cfg.ignore_label,
                     data_sources.split_size(cfg, cfg.train_split),
                     data_sources.split_size(cfg, eval_split(cfg)))


def _resize_pair(image, mask, size):
  """image bilinear (float32), mask nearest (int32, (h, w)) to size [h, w]."""
  image = tf.image.resize(tf.cast(image, tf.float32), size, method='bilinear')
  mask = tf.image.resize(mask[..., None], size, method='nearest')[..., 0]
  return image, mask


def _pad_pair(image, mask, height, width, ignore):
  """Pads at the bottom/right to at least height x width: image with 0, mask with `ignore`."""
  shape = tf.shape(mask)
  pads = [[0, tf.maximum(height - shape[0], 0)], [0, tf.maximum(width - shape[1], 0)]]
  return (tf.pad(image, pads + [[0, 0]]),
          tf.pad(mask - ignore, pads) + ignore)


def augment(image, mask, cfg, seed):
  """The training transform of one example (module docstring): uint8 (h, w, 3), int32 (h, w) ->
  float32 (S, S, 3) in [0, 255], int32 (S, S); `seed` is a stateless seed (2,)."""
  scale_seed, crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  lo, hi = cfg.scale_range
  scale = tf.random.stateless_uniform([], scale_seed, lo, hi)
  size = tf.maximum(tf.cast(tf.round(tf.cast(tf.shape(mask), tf.float32) * scale), tf.int32), 1)
  image, mask = _resize_pair(image, mask, size)
  image, mask = _pad_pair(image, mask, cfg.crop_size, cfg.crop_size, cfg.ignore_label)
  both = tf.concat([image, tf.cast(mask, tf.float32)[..., None]], axis=-1)
  both = tf.image.stateless_random_crop(both, [cfg.crop_size, cfg.crop_size, 4], crop_seed)
  if cfg.random_flip:
    both = tf.image.stateless_random_flip_left_right(both, flip_seed)
  return both[..., :3], tf.cast(tf.round(both[..., 3]), tf.int32)


def train_iterator(cfg, *, global_batch_size: int, seed: int, start_step: int,
                   process_index: int, process_count: int) -> Iterator[dict]:
  """Endless training batches of this process from step `start_step` on: {'image' float32
  (B, S, S, 3), 'label' int32 (B, S, S)}, B = global_batch_size // process_count, S = crop_size."""
  check_config(cfg)
  batch_size = determinism.local_batch_size(global_batch_size, process_index, process_count)
  first = determinism.first_record(start_step, batch_size)
  source = data_sources.open_split(cfg, cfg.train_split, process_index, process_count)

  def example(example_seed, record):
    image, mask = source.read(*record)
    image, label = augment(image, mask, cfg, example_seed)
    return {'image': image, 'label': label}

  ds = determinism.train_examples(
      source.records, example, shard_sizes=source.shard_sizes, process_index=process_index,
      split=cfg.train_split, seed=seed, first=first, shuffle_buffer=cfg.shuffle_buffer,
      num_parallel_calls=cfg.num_parallel_calls)
  return determinism.numpy_batches(ds, batch_size, drop_remainder=True)


def _eval_example(image, mask, cfg):
  """Full resolution, or (eval_size E) fitted into E x E and padded to it."""
  image = tf.cast(image, tf.float32)
  if cfg.eval_size is None:
    return image, mask
  shape = tf.cast(tf.shape(mask), tf.float32)
  factor = tf.minimum(1.0, cfg.eval_size / tf.reduce_max(shape))
  size = tf.maximum(tf.cast(tf.round(shape * factor), tf.int32), 1)
  image, mask = tf.cond(factor < 1.0, lambda: _resize_pair(image, mask, size),
                        lambda: (image, mask))
  image, mask = _pad_pair(image, mask, cfg.eval_size, cfg.eval_size, cfg.ignore_label)
  return (tf.ensure_shape(image, [cfg.eval_size, cfg.eval_size, 3]),
          tf.ensure_shape(mask, [cfg.eval_size, cfg.eval_size]))


def eval_iterator(cfg, *, global_batch_size: int, process_index: int,
                  process_count: int) -> Iterator[dict]:
  """One pass over this process's shard of the eval split, padded to whole batches.

  Yields {'image' float32 (B, H, W, 3), 'label' int32 (B, H, W), 'mask' float32 (B,)}; (H, W) is
  the images' own size, or (E, E) with eval_size E. Every process yields ceil(max shard size / B)
  batches; over all processes each example appears once with mask 1. With eval_size None, images
  of different sizes raise ValueError when they would share a batch.
  """
  check_config(cfg)
  batch_size = determinism.local_batch_size(global_batch_size, process_index, process_count)
  split = eval_split(cfg)
  source = data_sources.open_split(cfg, split, process_index, process_count)
  num_padding = determinism.eval_padding(source.shard_sizes, process_index, batch_size)

  def example(record, real):
    image, label = _eval_example(*source.read(*record), cfg)
    if not real:   # padding: the shard's first image, every pixel ignored
      label = tf.fill(tf.shape(label), cfg.ignore_label)
    return {'image': image, 'label': label, 'mask': tf.constant(float(real))}

  ds = source.records.map(lambda *r: example(r, True), num_parallel_calls=cfg.num_parallel_calls,
                          deterministic=True)
  if num_padding:
    first = source.records.take(1)
    if not source.shard_sizes[process_index]:   # an empty shard pads with another's first example
      first = data_sources.open_split(cfg, split, 0, process_count).records.take(1)
    ds = ds.concatenate(first.repeat(num_padding).map(lambda *r: example(r, False)))
  return _uniform_sizes(determinism.numpy_batches(ds, batch_size), split)


def _uniform_sizes(batches, split):
  try:
    yield from batches
  except tf.errors.InvalidArgumentError as e:
    if 'Cannot batch tensors with different shapes' not in str(e):
      raise
    raise ValueError(f'Images of split {split!r} differ in size and config.data.eval_size is None '
                     '(full resolution, one size per batch); set eval_size to an int E to pad '
                     f'(or fit) them into E x E: {e.message}') from None
