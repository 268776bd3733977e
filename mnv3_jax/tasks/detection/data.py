"""Detection input pipeline on tf.data: SSD-augmented training batches, resized eval batches.

The data config (`default_data_config()`; the trainer reads it as `config.data`):
  dataset         'det_shapes' (the embedded demo), 'coco/2017', 'voc/2007' or 'voc/2012'
                  (data_sources.py: classes, ignored boxes, image ids).
  data_dir        TFDS data dir (None: the TFDS default).
  train_split, eval_split   split names (TFDS slicing allowed, e.g. 'train[:90%]'); eval_split
                  None means the dataset's labelled evaluation split.
  image_size      side S of the square network input, in pixels (SSDLite: 320).
  max_boxes       G, boxes per image in a batch (None: the dataset's, data_sources.KNOWN). Training
                  keeps the first G after augmentation; an eval image with more stops the pipeline
                  with an error naming G (its mAP would be wrong).
  crop_min_ious   the minimum-IoU choices of the random crop (1.0: the whole image), drawn
                  uniformly; default torchvision's RandomIoUCrop (0 is SSD's "any patch").
  crop_scale_range, crop_aspect_range, crop_trials   the crop's side fractions, its w/h range and
                  the candidates per drawn minimum IoU (data_augment.py).
  random_flip     training: horizontal flip with probability 1/2.
  shuffle_buffer, num_parallel_calls   as the classification pipeline's.

Training (per example): drop ignored boxes (COCO crowd, VOC difficult), IoU crop, flip, resize to
S x S (aspect not kept, as torchvision's SSD transform), drop boxes under 1 px a side
(torchvision's SanitizeBoundingBoxes), pad to G. Determinism and sharding are those of
mnv3_jax/data/determinism.py: each process reads its `tfds.even_splits` shard; epoch e shuffles
it with a buffer seeded by (seed, process, e), record i of the endless sequence draws its crop and
flip from stateless ops keyed on (seed, process, i); `start_step` resumes exactly.

Batches are numpy dicts, B = global_batch_size // process_count:
  'image'  float32 (B, S, S, 3) in [-1, 1] (x / 127.5 - 1);
  'boxes'  float32 (B, G, 4) (x1, y1, x2, y2) in pixels of the S x S input (loss.py's layout);
  'labels' int32 (B, G) in 1..K (0 in padding rows); 'valid' bool (B, G).
Eval batches (the image resized to S x S, every box kept) add
  'crowd'  bool (B, G): ignored boxes (valid too; evaluation.py passes them to COCOeval as crowd);
  'image_size' int32 (B, 2): the original (height, width), for mAP in original pixels;
  'image_id' int32 (B,): the dataset's id (-1 for padding);
  'mask'   float32 (B,): 1 for real examples, 0 for the padding that fills the last batch (whose
           boxes are all invalid).
"""
from typing import Iterator, NamedTuple

import ml_collections
import tensorflow as tf
from ml_collections import config_dict

from mnv3_jax import defaults
from mnv3_jax.data import determinism
from mnv3_jax.tasks.detection import data_augment as augment
from mnv3_jax.tasks.detection import data_sources

AUTOTUNE = tf.data.AUTOTUNE
DEFAULTS = defaults.DETECTION_DATA


class DatasetInfo(NamedTuple):
  """What the trainer needs to know; example counts are per whole split."""
  num_classes: int     # including the background (the model's num_classes)
  max_boxes: int
  num_train_examples: int
  num_eval_examples: int


def default_data_config() -> ml_collections.ConfigDict:
  """The data config with every field at its default (module docstring)."""
  types = {'data_dir': str, 'eval_split': str, 'max_boxes': int}
  return ml_collections.ConfigDict({k: config_dict.placeholder(types[k]) if v is None else v
                                    for k, v in DEFAULTS.items()})


def _int(value, lo=1) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= lo


def _range(value, lo, hi) -> bool:
  return (len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
          and lo < value[0] <= value[1] <= hi)


def check_config(cfg) -> None:
  """Raises ValueError naming the first bad field of `cfg` and what is allowed (no data read)."""
  def bad(field, allowed):
    raise ValueError(f'config.data.{field}={cfg.get(field)!r} is invalid: {allowed}.')
  data_sources.check_dataset(cfg.dataset)
  if not _int(cfg.image_size, 32):
    bad('image_size', 'need an int >= 32 (SSDLite\'s stride-32 map)')
  if cfg.max_boxes is not None and not _int(cfg.max_boxes):
    bad('max_boxes', 'need None (the dataset\'s) or an int >= 1')
  ious = cfg.crop_min_ious
  if not (len(ious) and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in ious)):
    bad('crop_min_ious', 'need a non-empty list of IoUs in [0, 1] (1: no crop)')
  if not _range(cfg.crop_scale_range, 0, 1):
    bad('crop_scale_range', 'need (lo, hi) with 0 < lo <= hi <= 1')
  if not _range(cfg.crop_aspect_range, 0, float('inf')):
    bad('crop_aspect_range', 'need (lo, hi) with 0 < lo <= hi')
  if not _int(cfg.crop_trials):
    bad('crop_trials', 'need an int >= 1')
  if not _int(cfg.shuffle_buffer):
    bad('shuffle_buffer', 'need an int >= 1')
  if cfg.num_parallel_calls != AUTOTUNE and not _int(cfg.num_parallel_calls):
    bad('num_parallel_calls', f'need an int >= 1 or {AUTOTUNE} (AUTOTUNE)')


def eval_split(cfg) -> str:
  """config.data.eval_split, or the dataset's labelled evaluation split when it is None."""
  return cfg.eval_split if cfg.eval_split is not None else data_sources.KNOWN[
      cfg.dataset].eval_split


def max_boxes(cfg) -> int:
  """config.data.max_boxes, or the dataset's default when it is None."""
  return cfg.max_boxes if cfg.max_boxes is not None else data_sources.KNOWN[cfg.dataset].max_boxes


def get_dataset_info(cfg) -> DatasetInfo:
  """Classes, G and split sizes (writes 'det_shapes' on first use); errors as `check_config`, and
  FileNotFoundError for a TFDS dataset that is not prepared."""
  check_config(cfg)
  found = data_sources.builder(cfg)
  return DatasetInfo(data_sources.KNOWN[cfg.dataset].num_classes, max_boxes(cfg),
                     data_sources.split_size(found, cfg.train_split),
                     data_sources.split_size(found, eval_split(cfg)))


def _pixel_boxes(bbox, image):
  """Normalized (ymin, xmin, ymax, xmax) -> pixels (x1, y1, x2, y2) of `image`."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  return tf.gather(bbox, [1, 0, 3, 2], axis=1) * tf.stack([shape[1], shape[0]] * 2)


def augment_example(image, bbox, labels, cfg, seed):
  """The training transform of one example (module docstring): image uint8 (h, w, 3), bbox
  normalized (n, 4), labels (n,) (ignored boxes already dropped), `seed` (2,) -> {'image' float32
  (S, S, 3) in [0, 255], 'boxes', 'labels', 'valid'} of G rows."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  boxes = _pixel_boxes(bbox, image)
  shape = tf.shape(image)
  window = augment.iou_crop_window(shape[0], shape[1], boxes, crop_seed, tuple(cfg.crop_min_ious),
                                   tuple(cfg.crop_scale_range), tuple(cfg.crop_aspect_range),
                                   cfg.crop_trials)
  image, boxes, labels = augment.crop(image, boxes, labels, window)
  if cfg.random_flip:
    image, boxes = tf.cond(tf.random.stateless_uniform([], flip_seed) < 0.5,
                           lambda: augment.flip(image, boxes), lambda: (image, boxes))
  image, boxes = augment.resize(image, boxes, cfg.image_size)
  sizes = boxes[:, 2:] - boxes[:, :2]
  keep = tf.reduce_all(sizes >= 1.0, axis=1)
  boxes, labels, valid = augment.pad_boxes(max_boxes(cfg), tf.boolean_mask(boxes, keep),
                                           tf.boolean_mask(labels, keep))
  return {'image': image, 'boxes': boxes, 'labels': labels, 'valid': valid}


def train_iterator(cfg, *, global_batch_size: int, seed: int, start_step: int,
                   process_index: int, process_count: int) -> Iterator[dict]:
  """Endless training batches of this process from step `start_step` on: {'image', 'boxes',
  'labels', 'valid'} (module docstring)."""
  check_config(cfg)
  batch_size = determinism.local_batch_size(global_batch_size, process_index, process_count)
  first = determinism.first_record(start_step, batch_size)
  source = data_sources.open_split(cfg, cfg.train_split, process_index, process_count)

  def example(example_seed, record):
    kept = ~record['ignore']
    return augment_example(source.decode(record['image']), tf.boolean_mask(record['bbox'], kept),
                           tf.boolean_mask(record['label'], kept), cfg, example_seed)

  ds = determinism.train_examples(
      source.records, example, shard_sizes=source.shard_sizes, process_index=process_index,
      split=cfg.train_split, seed=seed, first=first, shuffle_buffer=cfg.shuffle_buffer,
      num_parallel_calls=cfg.num_parallel_calls)
  return determinism.numpy_batches(ds, batch_size, drop_remainder=True)


def _eval_example(record, real, cfg, decode):
  """Resized image, every box (checked against G), crowd flags, original size, id, mask."""
  image = decode(record['image'])
  g = max_boxes(cfg)
  n = tf.shape(record['label'])[0]
  check = tf.debugging.Assert(n <= g, [
      'image_id', record['image_id'], 'has', n, f'boxes; config.data.max_boxes={g} must be at '
      'least every eval image\'s count (mAP would miss the rest)'])
  with tf.control_dependencies([check]):
    image_size = tf.shape(image)[:2]
  resized, boxes = augment.resize(image, _pixel_boxes(record['bbox'], image), cfg.image_size)
  boxes, labels, crowd, valid = augment.pad_boxes(g, boxes, record['label'], record['ignore'])
  if not real:   # padding: the shard's first image, no boxes, no id
    valid = tf.zeros_like(valid)
  return {'image': resized, 'boxes': boxes, 'labels': labels, 'valid': valid,
          'crowd': crowd & valid, 'image_size': image_size,
          'image_id': tf.cast(record['image_id'], tf.int32) if real else tf.constant(-1),
          'mask': tf.constant(float(real))}


def eval_iterator(cfg, *, global_batch_size: int, process_index: int,
                  process_count: int) -> Iterator[dict]:
  """One pass over this process's shard of the eval split, padded to whole batches (module
  docstring). Every process yields ceil(max shard size / B) batches; over all processes each
  example appears once with mask 1."""
  check_config(cfg)
  batch_size = determinism.local_batch_size(global_batch_size, process_index, process_count)
  split = eval_split(cfg)
  source = data_sources.open_split(cfg, split, process_index, process_count)
  num_padding = determinism.eval_padding(source.shard_sizes, process_index, batch_size)
  ds = source.records.map(lambda r: _eval_example(r, True, cfg, source.decode),
                          num_parallel_calls=cfg.num_parallel_calls, deterministic=True)
  if num_padding:
    first = source.records.take(1)
    if not source.shard_sizes[process_index]:   # an empty shard pads with another's first example
      first = data_sources.open_split(cfg, split, 0, process_count).records.take(1)
    ds = ds.concatenate(first.repeat(num_padding).map(
        lambda r: _eval_example(r, False, cfg, source.decode)))
  return determinism.numpy_batches(ds, batch_size)
