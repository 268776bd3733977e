"""Datasets generated in Python (no download), written as TFDS datasets on first use.

Used by the procedural demos (mnv3_jax/tasks/segmentation/scenes.py 'seg_shapes',
mnv3_jax/tasks/detection/scenes.py 'det_shapes') and the embedded digits (datasets.py): a
builder class (its TFDS name is its class name in snake_case), then `prepare(builder_class,
data_dir)` writes it into data_dir once and returns the prepared builder, which
`tfds.builder(name, data_dir=...)` reads from then on.
"""
import abc
import contextlib
import io
import logging as std_logging
from typing import Dict, Type

import tensorflow_datasets as tfds
from absl import logging


class IndexedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose split s holds the examples `_example(s, i)`, keyed i, for i < SPLITS[s].

  Subclasses set SPLITS ({split name: number of examples}), DESCRIPTION (the TFDS description),
  VERSION and RELEASE_NOTES, and define `_features` and `_example`.
  """
  SPLITS: Dict[str, int]
  DESCRIPTION: str

  @abc.abstractmethod
  def _features(self) -> tfds.features.FeaturesDict:
    """The dataset's features."""

  @abc.abstractmethod
  def _example(self, split: str, index: int) -> dict:
    """Example `index` of `split`: values of `_features`, as TFDS encodes them."""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                 features=self._features())

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in self.SPLITS}

  def _generate_examples(self, split):
    for i in range(self.SPLITS[split]):
      yield i, self._example(split, i)


@contextlib.contextmanager
def _quiet_tfds():
  """Hides what TFDS says while it writes a generated dataset: its "Downloading and preparing"
  prints (nothing downloads) and the warning that the new folder has no dataset_info.json yet."""
  tfds_logger = std_logging.getLogger('absl')
  level = tfds_logger.level
  tfds_logger.setLevel(std_logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds_logger.setLevel(level)


def prepare(builder_class: Type[tfds.core.DatasetBuilder], data_dir) -> tfds.core.DatasetBuilder:
  """The prepared `builder_class` builder of `data_dir` (None: the TFDS default), written on first
  use (processes racing to write it are fine: the loser reads the winner's)."""
  with _quiet_tfds():
    builder = builder_class(data_dir=data_dir)
    prepared = builder.is_prepared()
  if not prepared:
    logging.info('writing the generated dataset %s to %s (once)', builder.name, builder.data_dir)
    with _quiet_tfds():
      try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
      except OSError:
        if not builder.is_prepared():  # Not a race lost to another process writing it too.
          raise
      builder = builder_class(data_dir=data_dir)
  return builder
