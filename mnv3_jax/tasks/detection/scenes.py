"""'det_shapes': an embedded, offline object-detection demo, drawn procedurally.

Each 128x128 RGB scene holds 1-4 objects of three classes (TFDS-style labels 0 circle,
1 rectangle, 2 triangle; the input pipeline shifts them to 1..3, 0 being the background):
  circle     a filled disk of radius 12-28 px;
  rectangle  axis-aligned, sides 24-56 px (any aspect between 1:2 and 2:1);
  triangle   equilateral, circumradius 14-30 px, any rotation.
Objects lie wholly inside the frame and never overlap (a shape that would touch an earlier one
is drawn again elsewhere, up to 50 tries, else left out; the first always fits), so every object
is fully visible and its box is tight: the smallest box holding its pixels, in pixel-edge
coordinates (a shape covering rows r0..r1 has ymin = r0 / 128, ymax = (r1 + 1) / 128). Boxes are
20-57 px a side (0.16-0.45 of the image): SSDLite's smallest default boxes at 128 px are 26 px
(scale 0.2).
A shape's colour is uniform random RGB, independent of its class; the background is a blend of two
random colours along a random direction with low-frequency texture, and pixel noise (sigma 8) covers
everything. A detector must use the outline, not the colour.
Learnable: SSDLite on MobileNetV3-Small 1.0 at 128 px (data.py's default crops and flips, batch
32, AdamW one-cycle to 2e-2, weight decay 1e-4, BatchNorm momentum 0.9), 2000 steps in 8 min on
the shared 2-core box (2026-12-01, load ~8): test AP 0.752, AP50 0.971 on all 300 test images.

The dataset is deterministic: example i of a split is drawn from
`np.random.default_rng((SEED, split number, i))`. `prepare(data_dir)` writes it once as the TFDS
dataset 'det_shapes' with TFDS coco's feature names: image uint8 (128, 128, 3), image/id int64 (= i),
objects/bbox (tfds BBoxFeature: normalized ymin, xmin, ymax, xmax), objects/label (ClassLabel);
splits 'train' 2000 and 'test' 300.
"""
from typing import List, Tuple

import numpy as np
import tensorflow_datasets as tfds
from skimage import draw

from mnv3_jax.data import generated_tfds

NAME = 'det_shapes'
CLASSES = ('circle', 'rectangle', 'triangle')
SIZE = 128
SPLITS = {'train': 2000, 'test': 300}
SEED = 20261202
MAX_OBJECTS = 4
_TRIES = 50


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """float32 (size, size, 3) in ~[0, 255]: two colours blended along a direction, plus texture."""
  a, b = rng.uniform(0, 255, (2, 3))
  angle = rng.uniform(0, 2 * np.pi)
  y, x = np.mgrid[0:size, 0:size] / (size - 1)
  t = np.clip(0.5 + np.cos(angle) * (x - 0.5) + np.sin(angle) * (y - 0.5), 0, 1)[..., None]
  # An 8x8 grid of noise, linearly interpolated to size x size (one matrix per axis).
  grid = np.linspace(0, 7, size)
  lerp = np.maximum(0, 1 - np.abs(grid[:, None] - np.arange(8)[None]))          # (size, 8)
  texture = np.einsum('ya,abc,xb->yxc', lerp, rng.normal(0, 25, (8, 8, 3)), lerp,
                      optimize=True)
  return ((1 - t) * a + t * b + texture).astype(np.float32)


def _outline(rng: np.random.Generator, cls: int, size: int):
  """(rows, cols) of the pixels of a shape of class `cls`, placed wholly inside the frame."""
  if cls == 0:
    radius = rng.uniform(12, 28)
    cy, cx = rng.uniform(radius, size - radius, 2)
    return draw.disk((cy, cx), radius, shape=(size, size))
  if cls == 1:
    h = rng.uniform(24, 56)
    w = np.clip(h * rng.uniform(0.5, 2.0), 24, 56)
    y0, x0 = rng.uniform(0, size - 1 - h), rng.uniform(0, size - 1 - w)
    rows, cols = draw.rectangle((round(y0), round(x0)), (round(y0 + h), round(x0 + w)))
    return rows.ravel(), cols.ravel()
  radius = rng.uniform(14, 30)
  cy, cx = rng.uniform(radius, size - radius, 2)
  turns = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
  return draw.polygon(cy + radius * np.sin(turns), cx + radius * np.cos(turns), (size, size))


def scene(rng: np.random.Generator, size: int = SIZE):
  """(image uint8 (size, size, 3), boxes float32 (n, 4) normalized (ymin, xmin, ymax, xmax),
  labels int64 (n,) in 0..2) drawn from `rng`; n in 1..MAX_OBJECTS."""
  image = _background(rng, size)
  filled = np.zeros((size, size), bool)
  boxes: List[Tuple[float, ...]] = []
  labels: List[int] = []
  for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
    cls = int(rng.integers(len(CLASSES)))
    for _ in range(_TRIES):
      pixels = _outline(rng, cls, size)
      if not filled[pixels].any():
        break
    else:
      continue
    rows, cols = pixels
    filled[rows, cols] = True
    image[rows, cols] = rng.uniform(0, 255, 3)
    boxes.append((rows.min(), cols.min(), rows.max() + 1, cols.max() + 1))
    labels.append(cls)
  image += rng.normal(0, 8, image.shape)
  image = np.clip(np.round(image), 0, 255).astype(np.uint8)
  return image, np.asarray(boxes, np.float32) / size, np.asarray(labels, np.int64)


def example(split: str, index: int):
  """Example `index` of `split` (a key of SPLITS): (image, boxes, labels) as `scene` returns."""
  if split not in SPLITS or not isinstance(index, (int, np.integer)) or not (
      0 <= index < SPLITS[split]):
    raise ValueError(f'{NAME} has no example {index!r} of split {split!r}; splits and sizes: '
                     f'{SPLITS}.')
  return scene(np.random.default_rng((SEED, list(SPLITS).index(split), int(index))))


class DetShapes(generated_tfds.IndexedBuilder):
  """The procedural detection scenes of this module as a TFDS dataset (no download)."""
  SPLITS = SPLITS
  DESCRIPTION = ('Procedural 128x128 detection scenes, classes ' + ', '.join(
      f'{i} {name}' for i, name in enumerate(CLASSES)) + ' (mnv3_jax.tasks.detection.scenes).')
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': '128x128 scenes of circles, rectangles, triangles with boxes; '
                            'train 2000, test 300.'}

  def _features(self):
    return tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(SIZE, SIZE, 3)),
        'image/id': np.int64,
        'objects': tfds.features.Sequence({
            'bbox': tfds.features.BBoxFeature(),
            'label': tfds.features.ClassLabel(names=CLASSES),
        }),
    })

  def _example(self, split, index):
    image, boxes, labels = example(split, index)
    return {'image': image, 'image/id': index, 'objects': {'bbox': boxes, 'label': labels}}


def prepare(data_dir) -> tfds.core.DatasetBuilder:
  """The prepared 'det_shapes' builder of `data_dir` (None: the TFDS default), written on first use
  (seconds; processes racing to write it are fine: the loser reads the winner's)."""
  return generated_tfds.prepare(DetShapes, data_dir)
