"""mnv3_jax/tasks/segmentation/scenes.py: the procedural 'seg_shapes' demo dataset."""
import colorsys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mnv3_jax.tasks.segmentation import scenes


def test_examples_are_deterministic_and_distinct():
  a, b = scenes.example('train', 7), scenes.example('train', 7)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], scenes.example('train', 8)[0])
  assert not np.array_equal(a[0], scenes.example('test', 7)[0])   # splits draw apart
  image, mask = a
  assert image.shape == (64, 64, 3) and image.dtype == np.uint8
  assert mask.shape == (64, 64) and mask.dtype == np.uint8


def _hue(rgb):
  return np.array([colorsys.rgb_to_hsv(*(p / 255.0))[0] for p in rgb.reshape(-1, 3)])


def test_classes_are_balanced_and_colour_alone_does_not_tell_them_apart():
  images, masks = zip(*(scenes.example('train', i) for i in range(60)))
  images, masks = np.stack(images), np.stack(masks)
  share = np.bincount(masks.ravel(), minlength=4) / masks.size
  assert 0.6 < share[0] < 0.9 and (share[1:] > 0.03).all(), share
  assert (masks.reshape(60, -1).max(1) > 0).all()   # every scene shows a shape
  # The nearest class hue names a shape pixel's class often (0.82 here), but far from always.
  shape = masks > 0
  hues = _hue(images[shape])
  centres = np.array([0.0, 1 / 3, 2 / 3])
  distance = np.abs(hues[:, None] - centres[None])
  nearest = np.argmin(np.minimum(distance, 1 - distance), 1) + 1
  accuracy = (nearest == masks[shape]).mean()
  assert 0.5 < accuracy < 0.9, accuracy


def test_prepared_tfds_dataset_holds_the_drawn_examples(tmp_path):
  builder = scenes.prepare(tmp_path)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == scenes.SPLITS
  reread = tfds.builder(scenes.NAME, data_dir=tmp_path)   # by name, as the pipeline opens it
  assert reread.is_prepared()
  stored = {}
  for ex in tfds.as_numpy(reread.as_dataset(split='test')):
    assert ex['segmentation_mask'].shape == (64, 64, 1) and ex['image'].dtype == np.uint8
    stored[ex['image'].tobytes()] = ex['segmentation_mask'][..., 0]
  assert len(stored) == scenes.SPLITS['test']
  for i in (0, 123, 299):
    image, mask = scenes.example('test', i)
    np.testing.assert_array_equal(stored[image.tobytes()], mask)
  assert scenes.prepare(tmp_path).is_prepared()   # a second call reads what is there


@pytest.mark.parametrize('split, index', [('validation', 0), ('test', 300), ('train', -1)])
def test_bad_examples_are_named(split, index):
  with pytest.raises(ValueError, match=f"example {index} of split '{split}'"):
    scenes.example(split, index)
