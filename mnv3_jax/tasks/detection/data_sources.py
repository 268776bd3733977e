"""Where detection examples come from: TFDS 'coco/2017', 'voc/2007', 'voc/2012' and 'det_shapes'.

Known datasets (`KNOWN`; prepared beforehand in data_dir and never downloaded here, except
'det_shapes', which scenes.py writes into data_dir on first use):
  name         classes (+ background)   ignored boxes           image id             eval split
  coco/2017    80 + 1 = 81              objects/is_crowd        image/id             validation
  voc/2007     20 + 1 = 21              objects/is_difficult    image/filename       test
  voc/2012     20 + 1 = 21              objects/is_difficult    image/filename       validation
  det_shapes   3 + 1 = 4                none                    image/id             test
TFDS labels 0..K-1 become 1..K: the SSD loss takes class 0 as the background (loss.py). Classes
are contiguous (COCO's 80, not torchvision's 91-slot numbering with gaps). Ignored boxes (COCO's
crowd regions, VOC's 'difficult' objects) are left out of training and kept, flagged, for the
evaluation, where COCOeval neither counts them as misses nor detections on them as false (for
VOC difficult objects that is the VOC rule, with COCO's crowd matching by intersection over the
detection's area). VOC has no numeric id: '2008_000123.jpg' gives 2008000123 (its digits).
"""
import os
from typing import Callable, NamedTuple, Optional, Tuple

import tensorflow as tf
import tensorflow_datasets as tfds

from mnv3_jax.tasks.detection import scenes


class Known(NamedTuple):
  """A TFDS detection dataset: its name and features (see the module docstring)."""
  tfds_name: str
  num_classes: int              # including the background, class 0
  ignore_key: Optional[str]     # a bool feature of `objects` marking boxes not trained on
  id_key: str                   # 'image/id' (int) or 'image/filename' (its digits)
  eval_split: str               # the labelled split to evaluate on
  max_boxes: int                # default boxes kept per image (>= any image's count)


KNOWN = {
    scenes.NAME: Known(scenes.NAME, len(scenes.CLASSES) + 1, None, 'image/id', 'test',
                       scenes.MAX_OBJECTS),
    'coco/2017': Known('coco/2017', 81, 'is_crowd', 'image/id', 'validation', 100),
    'voc/2007': Known('voc/2007', 21, 'is_difficult', 'image/filename', 'test', 64),
    'voc/2012': Known('voc/2012', 21, 'is_difficult', 'image/filename', 'validation', 64),
}


class Source(NamedTuple):
  """One process's shard of a split.

  records: dicts {'image': encoded bytes, 'bbox': float32 (n, 4) normalized (ymin, xmin, ymax,
    xmax), 'label': int32 (n,) in 1..K, 'ignore': bool (n,), 'image_id': int64}, the same order
    every time.
  decode: encoded bytes -> uint8 (h, w, 3); usable inside `tf.data` maps.
  shard_sizes: the number of records of every process's shard (index = process index).
  """
  records: tf.data.Dataset
  decode: Callable
  shard_sizes: Tuple[int, ...]


def check_dataset(name) -> Known:
  """KNOWN[name]; ValueError naming the allowed names otherwise."""
  if not isinstance(name, str) or name not in KNOWN:
    raise ValueError(f'config.data.dataset={name!r} is not a known detection dataset; allowed: '
                     f'{list(KNOWN)}.')
  return KNOWN[name]


def builder(cfg) -> tfds.core.DatasetBuilder:
  """The prepared builder of cfg.dataset in cfg.data_dir (FileNotFoundError if not prepared)."""
  known = check_dataset(cfg.dataset)
  if cfg.dataset == scenes.NAME:
    return scenes.prepare(cfg.data_dir)
  found = tfds.builder(known.tfds_name, data_dir=cfg.data_dir)
  if not found.is_prepared():
    root = os.fspath(found.data_dir_root)
    raise FileNotFoundError(
        f'TFDS dataset {known.tfds_name!r} is not prepared in data_dir={root}. Prepare it first '
        f'(`tfds build {known.tfds_name} --data_dir={root}`), then set '
        f'config.data.data_dir="{root}".')
  return found


def split_size(found: tfds.core.DatasetBuilder, split: str) -> int:
  """Examples of `split` (TFDS slicing allowed); ValueError naming the splits if it is invalid."""
  try:
    return found.info.splits[split].num_examples
  except (KeyError, ValueError, AssertionError) as e:
    raise ValueError(f'Split {split!r} is not valid for dataset {found.name!r}, whose splits are '
                     f'{list(found.info.splits)}: {e}') from e


def _record(known: Known):
  def record(ex):
    objects = ex['objects']
    n = tf.shape(objects['label'])[0]
    ignore = (tf.cast(objects[known.ignore_key], tf.bool) if known.ignore_key
              else tf.zeros([n], tf.bool))
    if known.id_key == 'image/filename':
      digits = tf.strings.regex_replace(ex['image/filename'], '[^0-9]', '')
      image_id = tf.strings.to_number(digits, tf.int64)
    else:
      image_id = tf.cast(ex[known.id_key], tf.int64)
    return {'image': ex['image'], 'bbox': tf.reshape(tf.cast(objects['bbox'], tf.float32), [n, 4]),
            'label': tf.cast(objects['label'], tf.int32) + 1, 'ignore': ignore,
            'image_id': image_id}
  return record


def _decode(encoded):
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def open_split(cfg, split: str, process_index: int, process_count: int) -> Source:
  """This process's contiguous shard of `split` (as `tfds.even_splits`: sizes differ by <= 1)."""
  known, found = check_dataset(cfg.dataset), builder(cfg)
  split_size(found, split)
  shards = tfds.even_splits(split, process_count)
  sizes = tuple(found.info.splits[s].num_examples for s in shards)
  if not sizes[process_index]:  # More processes than examples; TFDS refuses empty reads.
    empty = {'image': tf.constant([], tf.string), 'bbox': tf.zeros([0, 0, 4]),
             'label': tf.zeros([0, 0], tf.int32), 'ignore': tf.zeros([0, 0], tf.bool),
             'image_id': tf.zeros([0], tf.int64)}
    return Source(tf.data.Dataset.from_tensor_slices(empty), _decode, sizes)
  records = found.as_dataset(split=shards[process_index], shuffle_files=False,
                             decoders={'image': tfds.decode.SkipDecoding()},
                             read_config=tfds.ReadConfig(try_autocache=False))
  return Source(records.map(_record(known)), _decode, sizes)
