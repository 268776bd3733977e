"""Input pipeline on tf.data: Inception-style training batches, padded and masked eval batches.

Each process reads its own contiguous shard of a split (`tfds.even_splits`) and yields numpy batches
of `global_batch_size // process_count` examples; images are float32 (B, S, S, 3) in [-1, 1],
labels int32 (B,).

Training is deterministic given (seed, process_index, process_count): epoch e reads the shard in
its stored order (TFDS shuffles examples when it writes a dataset; image folders are listed in a
fixed shuffled order) through a shuffle buffer seeded by (seed, process_index, e), and record i of the
shard gets its crop and flip from stateless random ops keyed on (seed, process_index, e, i). A shard
no bigger than the buffer is thus fully reshuffled every epoch; a bigger one (ImageNet) gets a
different local shuffle of the same stored order. `train_iterator(start_step=k)` yields exactly
batches k, k+1, ... of an iterator started at step 0: it starts at epoch k * B // shard_size and
skips the rest within that epoch on undecoded records (so the skip reads, at most one epoch of the
shard, but does not decode). Epochs follow each other without a gap: a batch can span two epochs.
mnv3_jax/data/determinism.py holds this order, shared with the segmentation and detection pipelines.
"""
from typing import Iterator

import ml_collections
import tensorflow as tf
from ml_collections import config_dict

from mnv3_jax import defaults
from mnv3_jax.data import datasets
from mnv3_jax.data import determinism
from mnv3_jax.data import image_folder
# Re-exported: with the iterators below, the trainer's whole API to the data.
from mnv3_jax.data.datasets import DatasetInfo, get_dataset_info

__all__ = ['DatasetInfo', 'check_config', 'default_data_config', 'eval_iterator',
           'get_dataset_info', 'train_iterator']

AUTOTUNE = tf.data.AUTOTUNE
_MIN_OBJECT_COVERED = 0.1  # TF-slim's Inception preprocessing: a crop keeps >= 10% of the image.
_MAX_ATTEMPTS = 100        # TF-slim; after as many failed samples the whole image is used.


def default_data_config() -> ml_collections.ConfigDict:
  """`config.data` defaults (`mnv3_jax.defaults.DATA`: ImageNet, Inception preprocessing)."""
  return ml_collections.ConfigDict({
      k: config_dict.placeholder(str) if v is None else v for k, v in defaults.DATA.items()})


def check_config(cfg) -> None:
  """Raises ValueError naming the first bad field of `cfg` (a data config) and what is allowed."""
  def bad(field, allowed):
    raise ValueError(f'config.data.{field}={cfg[field]!r} is invalid: {allowed}.')
  if not isinstance(cfg.dataset, str) or not cfg.dataset:
    bad('dataset', f'need a TFDS name, {datasets.IMAGE_FOLDER!r} or {datasets.DIGITS!r}')
  if not isinstance(cfg.image_size, int) or cfg.image_size < 1:
    bad('image_size', 'need an int >= 1')
  lo, hi = cfg.crop_area_range
  if not 0 < lo <= hi <= 1:
    bad('crop_area_range', 'need (lo, hi) with 0 < lo <= hi <= 1')
  lo, hi = cfg.aspect_ratio_range
  if not 0 < lo <= hi:
    bad('aspect_ratio_range', 'need (lo, hi) with 0 < lo <= hi')
  if not 0 < cfg.eval_crop_fraction <= 1:
    bad('eval_crop_fraction', 'need 0 < fraction <= 1')
  if not 0 <= cfg.folder_holdout_fraction < 1:
    bad('folder_holdout_fraction', 'need 0 <= fraction < 1')
  if not isinstance(cfg.shuffle_buffer, int) or cfg.shuffle_buffer < 1:
    bad('shuffle_buffer', 'need an int >= 1')
  if cfg.num_parallel_calls != AUTOTUNE and cfg.num_parallel_calls < 1:
    bad('num_parallel_calls', f'need an int >= 1 or {AUTOTUNE} (AUTOTUNE)')
  image_folder.max_image_pixels(cfg)


def _decode_window(encoded: tf.Tensor, window) -> tf.Tensor:
  """Decodes the window (y, x, h, w) = window(image shape) of an encoded image: uint8 (h, w, 3).

  JPEGs decode only the window; other formats (PNG, BMP, GIF) decode whole, then crop. Grayscale
  becomes RGB.
  """
  def jpeg():
    y, x, h, w = window(tf.image.extract_jpeg_shape(encoded))
    return tf.image.decode_and_crop_jpeg(encoded, tf.stack([y, x, h, w]), channels=3)

  def other():
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    y, x, h, w = window(tf.shape(image))
    return image[y:y + h, x:x + w]

  return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _random_window(cfg, seed):
  """The Inception distorted-bounding-box crop of `cfg`'s area and aspect ranges, keyed on `seed`."""
  def window(shape):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=_MIN_OBJECT_COVERED, aspect_ratio_range=tuple(cfg.aspect_ratio_range),
        area_range=tuple(cfg.crop_area_range), max_attempts=_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True)
    return begin[0], begin[1], size[0], size[1]
  return window


def _center_window(fraction: float):
  """The central square whose side is `fraction` of the shorter side (TF Model Garden's)."""
  def window(shape):
    side = tf.cast(fraction * tf.cast(tf.minimum(shape[0], shape[1]), tf.float32), tf.int32)
    side = tf.maximum(side, 1)
    return (shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2, side, side
  return window


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 (h, w, 3) -> float32 (size, size, 3) in [0, 255], bilinear."""
  return tf.image.resize(image, [size, size], method='bilinear')


def train_iterator(data_config, *, global_batch_size: int, seed: int, start_step: int,
                   process_index: int, process_count: int) -> Iterator[dict]:
  """Endless training batches of this process from step `start_step` on.

  Yields {'image': float32 (B, S, S, 3) in [-1, 1], 'label': int32 (B,)} with
  B = global_batch_size // process_count and S = data_config.image_size; see the module docstring
  for the determinism guarantees. Step k covers this shard's examples k*B .. (k+1)*B - 1 of the
  endless sequence of epochs.
  """
  check_config(data_config)
  batch_size = determinism.local_batch_size(global_batch_size, process_index, process_count)
  first = determinism.first_record(start_step, batch_size)
  cfg = data_config
  source = datasets.open_split(cfg, cfg.train_split, process_index, process_count)
  records, read = source.dataset, source.read
  if cfg.cache:
    records = records.map(lambda key, label: (read(key), label), num_parallel_calls=AUTOTUNE)
    records, read = records.cache(), tf.identity

  def example(example_seed, record):
    key, label = record
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(example_seed, 2))
    image = _resize(_decode_window(read(key), _random_window(cfg, crop_seed)), cfg.image_size)
    if cfg.random_flip:
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return {'image': image, 'label': tf.cast(label, tf.int32)}

  ds = determinism.train_examples(
      records, example, shard_sizes=source.shard_sizes, process_index=process_index,
      split=cfg.train_split, seed=seed, first=first, shuffle_buffer=cfg.shuffle_buffer,
      num_parallel_calls=cfg.num_parallel_calls)
  return determinism.numpy_batches(ds, batch_size, drop_remainder=True)


def eval_iterator(data_config, *, global_batch_size: int, process_index: int,
                  process_count: int) -> Iterator[dict]:
  """One pass over this process's shard of the eval split, padded to whole batches.

  Yields {'image': float32 (B, S, S, 3) in [-1, 1], 'label': int32 (B,), 'mask': float32 (B,)},
  B = global_batch_size // process_count: the central crop resized to S x S; mask is 1 for real
  examples and 0 for padding (zero label, image -1). Every process yields
  ceil(max shard size / B) batches, and over all processes each example appears once with mask 1.
  """
  check_config(data_config)
  batch_size = determinism.local_batch_size(global_batch_size, process_index, process_count)
  cfg = data_config
  source = datasets.open_split(cfg, cfg.eval_split, process_index, process_count)
  num_padding = determinism.eval_padding(source.shard_sizes, process_index, batch_size)
  read, window = source.read, _center_window(cfg.eval_crop_fraction)

  def example(key, label):
    image = _resize(_decode_window(read(key), window), cfg.image_size)
    return {'image': image, 'label': tf.cast(label, tf.int32), 'mask': tf.constant(1.0)}

  padding = {'image': tf.zeros([cfg.image_size, cfg.image_size, 3]),
             'label': tf.constant(0, tf.int32), 'mask': tf.constant(0.0)}
  ds = source.dataset.map(example, num_parallel_calls=cfg.num_parallel_calls, deterministic=True)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  return determinism.numpy_batches(ds, batch_size)
