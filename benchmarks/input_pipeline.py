r"""Images/s of `input_pipeline.train_iterator` (one process, batch 32) on generated data.

  .venv/bin/python benchmarks/input_pipeline.py [--num_batches=100] [--work_dir=/tmp/x]

Cases: 'digits' at 32 and 64 px (the embedded demo: PNG 8x8), and an on-disk `imagenet2012`
stand-in of JPEGs of 500x375 (ImageNet's typical size) at 224 px. The first batches (pipeline start,
shuffle-buffer fill) are excluded. `measure` is the function other benchmarks can call.
"""
import os
import sys
import tempfile
import time
from typing import NamedTuple

from absl import app, flags
import numpy as np
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mnv3_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top

flags.DEFINE_integer('num_batches', 100, 'Batches timed per case, after 5 warm-up batches.')
flags.DEFINE_integer('num_jpegs', 400, 'Training images of the imagenet2012 stand-in.')
flags.DEFINE_string('work_dir', None, 'Where to write the data (default: a temporary folder).')
FLAGS = flags.FLAGS


class Speed(NamedTuple):
  images_per_s: float     # Wall clock: what a consumer gets (falls when other work shares the CPU).
  cpu_ms_per_image: float  # CPU time of the whole process (all tf.data threads) per image.


def measure(data_config, *, batch_size: int = 32, num_batches: int = 100,
            warmup: int = 5) -> Speed:
  """Speed of `train_iterator` (one process) over `num_batches`, after `warmup` batches."""
  batches = input_pipeline.train_iterator(
      data_config, global_batch_size=batch_size, seed=0, start_step=0, process_index=0,
      process_count=1)
  for _ in range(warmup):
    next(batches)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    next(batches)
  images = num_batches * batch_size
  return Speed(images / (time.perf_counter() - wall),
               1e3 * (time.process_time() - cpu) / images)


def natural_looking_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 (height, width, 3): smooth colour blobs plus mild noise, to get photo-like JPEG sizes."""
  coarse = rng.uniform(0, 255, (height // 25 + 2, width // 25 + 2, 3))
  image = np.kron(coarse, np.ones((25, 25, 1)))[:height, :width]
  return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


def write_imagenet_stand_in(data_dir: str, num_train: int, seed: int = 0) -> None:
  """An `imagenet2012` TFDS dataset of 500x375 JPEGs that plain tfds reads (10 eval images)."""
  rng = np.random.default_rng(seed)
  def split(n):
    return [(i, {'image': natural_looking_image(rng, 375, 500), 'label': int(rng.integers(1000)),
                 'file_name': f'{i}.JPEG'}) for i in range(n)]
  tfds.dataset_builders.store_as_tfds_dataset(
      name='imagenet2012', version='5.1.0', features=tfds.builder('imagenet2012').info.features,
      split_datasets={'train': split(num_train), 'validation': split(10)}, data_dir=data_dir,
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def main(_):
  work_dir = FLAGS.work_dir or tempfile.mkdtemp()
  cases = []
  for size in (32, 64):
    cfg = input_pipeline.default_data_config()
    cfg.update(dict(dataset='digits', data_dir=work_dir, eval_split='test', image_size=size,
                    crop_area_range=(0.6, 1.0), random_flip=False))
    cases.append((f'digits {size}px', cfg))
  if not os.path.isdir(os.path.join(work_dir, 'imagenet2012')):
    write_imagenet_stand_in(work_dir, FLAGS.num_jpegs)
  cfg = input_pipeline.default_data_config()
  cfg.data_dir = work_dir
  cases.append(('imagenet2012 stand-in 500x375 JPEG, 224px', cfg))
  for name, cfg in cases:
    speed = measure(cfg, num_batches=FLAGS.num_batches)
    print(f'{name}: {speed.images_per_s:.0f} images/s, {speed.cpu_ms_per_image:.2f} CPU-ms/image '
          f'(batch 32, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})', flush=True)


if __name__ == '__main__':
  app.run(main)
