"""Runs the whole suite on 8 CPU devices, with a compilation cache shared by its tests.

XLA reads the device-count flag once, when jax initialises, so it is set before any import of jax.
The persistent cache lets tests that compile the same train step (e.g. a run and its resumption,
in this process or another) reuse one compilation; it lives in a temp folder of this test run only.
"""
import os
import tempfile

import numpy as np
import pytest

_FLAGS = {'xla_force_host_platform_device_count': 8,
          # Unoptimized XLA code compiles ~2x faster; compilation, not running, is what the suite
          # spends its time on (tests/test_*.py compare results, never speed).
          'xla_backend_optimization_level': 0}
for _name, _value in _FLAGS.items():
  if _name not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} --{_name}={_value}".strip()

# One XLA compilation cache for every process of the run: the pytest workers (scripts/test.sh sets
# MNV3_TEST_XLA_CACHE) and the processes tests start, which inherit these variables. A size limit
# turns on jax's file lock, so no process reads an entry another is still writing.
_CACHE = (None if os.environ.get('MNV3_TEST_XLA_CACHE')
          else tempfile.TemporaryDirectory(prefix='mnv3_jax_xla_cache_'))
os.environ.update(JAX_COMPILATION_CACHE_DIR=os.environ.get('MNV3_TEST_XLA_CACHE') or _CACHE.name,
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.5',
                  JAX_COMPILATION_CACHE_MAX_SIZE=str(8 << 30))

import jax  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position

from tests.support import NUM_EVAL, NUM_TRAIN, tiny_config  # pylint: disable=wrong-import-position
_SIZES = ((40, 56), (64, 48), (33, 90))  # (height, width) of the stand-in's JPEGs.


@pytest.fixture(scope='session')
def imagenet_dir(tmp_path_factory):
  """An on-disk imagenet2012 (real features, JPEGs) that plain tfds reads: train labels 0..36,
  validation labels 0..10, one example per label."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)

  def split(n):
    return [(i, {'image': rng.integers(0, 256, _SIZES[i % 3] + (3,), dtype=np.uint8), 'label': i,
                 'file_name': f'{i}.JPEG'}) for i in range(n)]

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds.dataset_builders.store_as_tfds_dataset(
      name='imagenet2012', version='5.1.0', features=tfds.builder('imagenet2012').info.features,
      split_datasets={'train': split(NUM_TRAIN), 'validation': split(NUM_EVAL)}, data_dir=data_dir,
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  """A data_dir with the embedded digits dataset built (once per test process), for runs of
  `support.tiny_config`; built before any test starts processes that would each build it."""
  from mnv3_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp('digits')
  input_pipeline.get_dataset_info(tiny_config(path).data)
  return path


@pytest.fixture(scope='session')
def det_shapes_dir(tmp_path_factory):
  """A data_dir with the embedded detection demo 'det_shapes' written (once per test process)."""
  from mnv3_jax.tasks.detection import scenes  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp('det_shapes')
  scenes.prepare(path)
  return str(path)


@pytest.fixture(scope='session')
def seg_shapes_dir(tmp_path_factory):
  """A data_dir with the embedded segmentation demo 'seg_shapes' written (once per test process)."""
  from mnv3_jax.tasks.segmentation import scenes  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp('seg_shapes')
  scenes.prepare(path)
  return str(path)
