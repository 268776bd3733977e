"""Dataset sources for the input pipeline: TFDS datasets, a folder of images, the embedded digits.

`data_config.dataset` selects the source:
- a TFDS name (default 'imagenet2012'): any image-classification dataset with an 'image' (Image)
  and a 'label' (ClassLabel) feature, prepared beforehand in `data_dir` (None: the TFDS default,
  ~/tensorflow_datasets or $TFDS_DATA_DIR; gs:// paths work). Nothing is ever downloaded here.
  Splits accept TFDS slicing, e.g. train_split='train[:99%]', eval_split='train[99%:]'.
- 'image_folder': the user's own images (JPEG, PNG, BMP or GIF) under `data_dir`, one subfolder
  per class, optionally under <train_split>/ and <eval_split>/ folders; image_folder.py says
  which subfolders are classes and which files are skipped (broken, over `max_image_pixels`).
- 'digits': scikit-learn's `load_digits` (1797 8x8 grayscale images of 10 digits, shipped inside
  the scikit-learn wheel), built once into `data_dir` as the TFDS dataset 'sklearn_digits' with a
  fixed stratified split: 'train' 1497 and 'test' 300 images (set eval_split='test').

A source hands the pipeline one process's shard of a split (`open_split`) as (key, label) records in
a fixed order, where key is the encoded image (TFDS) or the image's path (folder); nothing is decoded,
so the pipeline can shuffle and skip records before the expensive work.
"""
import os
from typing import Callable, List, NamedTuple, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mnv3_jax.data import generated_tfds
from mnv3_jax.data import image_folder

IMAGE_FOLDER = image_folder.NAME
DIGITS = 'digits'
_DIGITS_TFDS_NAME = 'sklearn_digits'
_IMAGENET_HELP = (
    'ImageNet cannot be downloaded automatically. Download ILSVRC2012_img_train.tar and '
    'ILSVRC2012_img_val.tar (https://image-net.org/download-images.php) into {manual}, then run '
    '`tfds build imagenet2012 --data_dir={root}` (or in Python: tfds.builder("imagenet2012", '
    'data_dir="{root}").download_and_prepare()) and set config.data.data_dir="{root}".')


class DatasetInfo(NamedTuple):
  """What the trainer needs to know about a dataset; example counts are per whole split."""
  num_classes: int
  num_train_examples: int
  num_eval_examples: int


class SplitSource(NamedTuple):
  """One process's shard of a split, undecoded.

  dataset: records (key: tf.string scalar, label: tf.int64 scalar), same order on every call.
  read: key -> encoded image bytes (tf.string); usable inside `tf.data` maps.
  shard_sizes: the number of records of every process's shard (index = process index).
  """
  dataset: tf.data.Dataset
  read: Callable[[tf.Tensor], tf.Tensor]
  shard_sizes: Tuple[int, ...]


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits as a TFDS dataset: 'train' 1497 and 'test' 300 images.

  The split is stratified by class and fixed (`train_test_split(..., random_state=0)`); pixel
  values 0..16 are scaled to uint8 0..255 (round(v * 255 / 16)). Built from the installed wheel: no
  download.
  """
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'load_digits with a stratified 1497/300 split (random_state=0).'}
  NUM_TEST = 300

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='sklearn.datasets.load_digits: 8x8 handwritten digits (UCI optdigits).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1)),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    from sklearn import datasets as sk_datasets, model_selection  # pylint: disable=g-import-not-at-top
    digits = sk_datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    train, test = model_selection.train_test_split(
        np.arange(len(images)), test_size=self.NUM_TEST, stratify=digits.target, random_state=0)
    return {'train': self._generate_examples(images, digits.target, train),
            'test': self._generate_examples(images, digits.target, test)}

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {'image': images[i], 'label': int(labels[i])}


def _even_shard_sizes(n: int, count: int) -> List[int]:
  """Sizes of `tfds.even_splits(split, count)` for a split of n examples (the first get the rest)."""
  return [n // count + (1 if i < n % count else 0) for i in range(count)]


def _tfds_builder(data_config) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder of `data_config.dataset`; builds 'digits' on first use."""
  name = _DIGITS_TFDS_NAME if data_config.dataset == DIGITS else data_config.dataset
  if data_config.dataset == DIGITS:
    builder = generated_tfds.prepare(SklearnDigits, data_config.data_dir)
  else:
    try:
      builder = tfds.builder(name, data_dir=data_config.data_dir)
    except tfds.core.DatasetNotFoundError as e:
      raise ValueError(
          f'Unknown dataset {name!r}: not a TFDS dataset nor found in data_dir='
          f'{data_config.data_dir!r}. Use a TFDS name, {IMAGE_FOLDER!r} or {DIGITS!r}.') from e
  if not builder.is_prepared():
    root = os.fspath(builder.data_dir_root)
    how = (_IMAGENET_HELP.format(manual=os.path.join(root, 'downloads', 'manual'), root=root)
           if name == 'imagenet2012' else
           f'Prepare it first, e.g. `tfds build {name} --data_dir={root}`, then set '
           f'config.data.data_dir="{root}".')
    raise FileNotFoundError(
        f'TFDS dataset {name!r} is not prepared in data_dir={root} (looked for '
        f'{builder.data_dir}). {how}')
  features = builder.info.features
  image, label = (features[k] if k in features.keys() else None for k in ('image', 'label'))
  if not (isinstance(image, tfds.features.Image) and isinstance(label, tfds.features.ClassLabel)):
    raise ValueError(f'Dataset {name!r} needs an Image "image" and a ClassLabel "label" feature; '
                     f'it has {features}.')
  return builder


def _tfds_num_examples(builder, split) -> int:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError, AssertionError) as e:
    raise ValueError(f'Split {split!r} is not valid for dataset {builder.name!r}, whose splits are '
                     f'{list(builder.info.splits)}: {e}') from e


def get_dataset_info(data_config) -> DatasetInfo:
  """Classes and split sizes of the configured dataset (builds 'digits' on first use).

  Raises FileNotFoundError within seconds, saying where it looked and how to prepare the data, if
  a TFDS dataset is not prepared (it never downloads); ValueError for unknown datasets or splits.
  """
  if data_config.dataset == IMAGE_FOLDER:
    classes, train, _ = image_folder.split(data_config, data_config.train_split)
    _, evals, _ = image_folder.split(data_config, data_config.eval_split)
    return DatasetInfo(len(classes), len(train), len(evals))
  builder = _tfds_builder(data_config)
  return DatasetInfo(builder.info.features['label'].num_classes,
                     _tfds_num_examples(builder, data_config.train_split),
                     _tfds_num_examples(builder, data_config.eval_split))


def open_split(data_config, split: str, process_index: int, process_count: int) -> SplitSource:
  """This process's contiguous shard of `split` (as `tfds.even_splits`: sizes differ by <= 1)."""
  if data_config.dataset == IMAGE_FOLDER:
    _, paths, labels = image_folder.split(data_config, split)
    sizes = _even_shard_sizes(len(paths), process_count)
    start = sum(sizes[:process_index])
    shard = slice(start, start + sizes[process_index])
    dataset = tf.data.Dataset.from_tensor_slices((paths[shard], labels[shard]))
    return SplitSource(dataset, tf.io.read_file, tuple(sizes))
  builder = _tfds_builder(data_config)
  _tfds_num_examples(builder, split)
  shards = tfds.even_splits(split, process_count)
  sizes = tuple(builder.info.splits[s].num_examples for s in shards)
  if not sizes[process_index]:  # More processes than examples; TFDS refuses empty reads.
    dataset = tf.data.Dataset.from_tensor_slices((tf.constant([], tf.string),
                                                  tf.constant([], tf.int64)))
    return SplitSource(dataset, tf.identity, sizes)
  dataset = builder.as_dataset(
      split=shards[process_index], shuffle_files=False,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(try_autocache=False))
  dataset = dataset.map(lambda ex: (ex['image'], ex['label']))
  return SplitSource(dataset, tf.identity, sizes)
