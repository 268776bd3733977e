"""'seg_shapes': an embedded, offline demo of semantic segmentation, drawn procedurally.

Each 64x64 RGB scene holds 1-3 shapes on a textured background; the mask gives every pixel's class:
  0 background, 1 disk, 2 rectangle (any aspect 1:2..2:1, rotated), 3 triangle (rotated),
where a later shape covers an earlier one (so the mask is what is visible). Shapes are ~20-45
pixels across and may leave the frame. Colour tells the classes apart only partly: a shape's hue
is drawn around its class's (red, green, blue for classes 1, 2, 3) with a spread of 0.12 of the
hue circle (neighbouring classes overlap: the nearest class hue is right for ~82% of shape
pixels), saturation 0.35-1 and value 0.45-1; the background is a blend of two colours of
saturation 0-0.6 (it overlaps the shapes' range) with low-frequency texture and pixel noise on
everything. A network must use shape, not colour alone.

The dataset is deterministic: example i of a split is drawn from
`np.random.default_rng((SEED, split number, i))`. `prepare(data_dir)` writes it once as the TFDS
dataset 'seg_shapes' (features image uint8 (64, 64, 3), segmentation_mask uint8 (64, 64, 1);
splits 'train' 2000 and 'test' 300), which `tfds.builder('seg_shapes', data_dir=...)` then reads.
"""
import colorsys

import numpy as np
import tensorflow_datasets as tfds
from skimage import draw, transform

from mnv3_jax.data import generated_tfds

NAME = 'seg_shapes'
CLASSES = ('background', 'disk', 'rectangle', 'triangle')
SIZE = 64
SPLITS = {'train': 2000, 'test': 300}
SEED = 20261201
_HUES = {1: 0.0, 2: 1 / 3, 3: 2 / 3}
_HUE_SPREAD = 0.12


def _hsv(h, s, v) -> np.ndarray:
  return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """float32 (size, size, 3): two colours blended along a random direction, plus texture."""
  a, b = (_hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.2, 0.95)) for _ in range(2))
  angle = rng.uniform(0, 2 * np.pi)
  y, x = np.mgrid[0:size, 0:size] / (size - 1)
  t = np.clip(0.5 + (np.cos(angle) * (x - 0.5) + np.sin(angle) * (y - 0.5)), 0, 1)[..., None]
  texture = transform.resize(rng.normal(0, 25, (6, 6, 3)), (size, size, 3), order=1,
                             anti_aliasing=False)
  return (1 - t) * a + t * b + texture


def _outline(rng: np.random.Generator, cls: int, size: int):
  """Rows and columns of the pixels of a shape of class `cls`, centred anywhere in the image."""
  cy, cx = rng.uniform(0, size, 2)
  if cls == 1:
    return draw.disk((cy, cx), rng.uniform(10, 20), shape=(size, size))
  angle = rng.uniform(0, 2 * np.pi)
  if cls == 2:
    h = rng.uniform(14, 34)
    w = h * rng.uniform(0.5, 2.0)
    corners = np.array([[-h, -w], [-h, w], [h, w], [h, -w]]) / 2
  else:
    radius = rng.uniform(12, 24)
    turns = angle + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    corners = np.stack([np.sin(turns), np.cos(turns)], 1) * radius
    angle = 0.0
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  corners = corners @ rotation.T + (cy, cx)
  return draw.polygon(corners[:, 0], corners[:, 1], shape=(size, size))


def scene(rng: np.random.Generator, size: int = SIZE):
  """(image uint8 (size, size, 3), mask uint8 (size, size) of class ids) drawn from `rng`."""
  image = _background(rng, size)
  mask = np.zeros((size, size), np.uint8)
  for _ in range(rng.integers(1, 4)):
    cls = int(rng.integers(1, len(CLASSES)))
    rr, cc = _outline(rng, cls, size)
    colour = _hsv(_HUES[cls] + rng.normal(0, _HUE_SPREAD), rng.uniform(0.35, 1),
                  rng.uniform(0.45, 1))
    image[rr, cc] = colour + rng.normal(0, 6, 3)   # a slight tint per shape
    mask[rr, cc] = cls
  image += rng.normal(0, 8, image.shape)
  return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def example(split: str, index: int):
  """Example `index` of `split` (a key of SPLITS): (image, mask) as `scene` returns them."""
  if split not in SPLITS or not 0 <= index < SPLITS[split]:
    raise ValueError(f'{NAME} has no example {index!r} of split {split!r}; splits and sizes: '
                     f'{SPLITS}.')
  return scene(np.random.default_rng((SEED, list(SPLITS).index(split), index)))


class SegShapes(generated_tfds.IndexedBuilder):
  """The procedural shapes scenes of this module as a TFDS dataset (no download)."""
  SPLITS = SPLITS
  DESCRIPTION = ('Procedural 64x64 scenes with per-pixel classes ' + ', '.join(
      f'{i} {name}' for i, name in enumerate(CLASSES)) + ' (mnv3_jax.tasks.segmentation.scenes).')
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': '64x64 scenes of disks, rectangles, triangles; train 2000, test 300.'}

  def _features(self):
    return tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(SIZE, SIZE, 3)),
        'segmentation_mask': tfds.features.Image(shape=(SIZE, SIZE, 1)),
    })

  def _example(self, split, index):
    image, mask = example(split, index)
    return {'image': image, 'segmentation_mask': mask[..., None]}


def prepare(data_dir) -> tfds.core.DatasetBuilder:
  """The prepared 'seg_shapes' builder of `data_dir` (None: the TFDS default), written on first use
  (seconds; processes racing to write it are fine: the loser reads the winner's)."""
  return generated_tfds.prepare(SegShapes, data_dir)
