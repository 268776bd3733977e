"""mnv3_jax/tasks/detection/scenes.py: the procedural 'det_shapes' demo dataset."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mnv3_jax.tasks.detection import scenes


def test_examples_are_deterministic_and_distinct():
  a, b = scenes.example('train', 7), scenes.example('train', 7)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], scenes.example('train', 8)[0])
  assert not np.array_equal(a[0], scenes.example('test', 7)[0])   # splits draw apart
  image, boxes, labels = a
  assert image.shape == (128, 128, 3) and image.dtype == np.uint8
  assert boxes.shape == (len(labels), 4) and boxes.dtype == np.float32 and labels.dtype == np.int64


def _object_pixels(image, box):
  """(bool mask of the box's pixels near the object's colour (the most common one in the box),
  the largest share of object-coloured pixels on one side of the 1-pixel ring around the box), or
  None when a side of the ring has a similar colour (low contrast: not checkable)."""
  y1, x1, y2, x2 = box
  patch = image[y1:y2, x1:x2].astype(float)
  flat = patch.reshape(-1, 3)
  quantized, counts = np.unique(flat // 32, axis=0, return_counts=True)
  colour = np.median(flat[(flat // 32 == quantized[np.argmax(counts)]).all(1)], axis=0)
  last = scenes.SIZE - 1
  ring = [image[max(y1 - 1, 0), x1:x2], image[min(y2, last), x1:x2],
          image[y1:y2, max(x1 - 1, 0)], image[y1:y2, min(x2, last)]]
  distances = [np.linalg.norm(side.astype(float) - colour, axis=-1) for side in ring]
  if min(np.median(d) for d in distances) < 80:
    return None
  return np.linalg.norm(patch - colour, axis=-1) < 30, max((d < 30).mean() for d in distances)


def test_boxes_are_tight_around_visible_objects_of_every_class():
  counts, sides, checked = np.zeros(3, int), [], 0
  for i in range(60):
    image, boxes, labels = scenes.example('train', i)
    assert 1 <= len(labels) <= scenes.MAX_OBJECTS
    counts += np.bincount(labels, minlength=3)
    pixels = np.round(boxes * scenes.SIZE).astype(int)
    np.testing.assert_allclose(pixels, boxes * scenes.SIZE, atol=1e-4)   # whole pixel edges
    assert (pixels[:, :2] >= 0).all() and (pixels[:, 2:] <= scenes.SIZE).all()
    sides.append(pixels[:, 2:] - pixels[:, :2])
    # Tight: the object's colour reaches all four sides of its box; its share of the box is
    # its class's (disk pi/4, rectangle 1, triangle 3*sqrt(3)/(4*1.5*sqrt(3)) ~ 0.43 to 0.5).
    for box, label in zip(pixels, labels):
      found = _object_pixels(image, box)
      if found is None:
        continue
      near, outside = found
      checked += 1
      assert outside < 0.5, outside   # the object does not go on beyond its box
      assert near[0].any() and near[-1].any() and near[:, 0].any() and near[:, -1].any()
      fill = near.mean()
      assert {0: 0.7 < fill < 0.86, 1: fill > 0.93, 2: 0.38 < fill < 0.6}[label], (label, fill)
  assert (counts > 30).all() and checked > 100, (counts, checked)
  sides = np.concatenate(sides)
  assert sides.min() >= 20 and sides.max() <= 57


def test_prepared_tfds_dataset_holds_the_drawn_examples(tmp_path):
  builder = scenes.prepare(tmp_path)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == scenes.SPLITS
  reread = tfds.builder(scenes.NAME, data_dir=tmp_path)   # by name, as the pipeline opens it
  assert reread.is_prepared()
  assert reread.info.features['objects']['label'].names == list(scenes.CLASSES)
  stored = {int(ex['image/id']): ex for ex in tfds.as_numpy(reread.as_dataset(split='test'))}
  assert sorted(stored) == list(range(scenes.SPLITS['test']))
  for i in (0, 123, 299):
    image, boxes, labels = scenes.example('test', i)
    np.testing.assert_array_equal(stored[i]['image'], image)
    np.testing.assert_array_equal(stored[i]['objects']['bbox'], boxes)
    np.testing.assert_array_equal(stored[i]['objects']['label'], labels)
  assert scenes.prepare(tmp_path).is_prepared()   # a second call reads what is there


@pytest.mark.parametrize('split, index', [('validation', 0), ('test', 300), ('train', -1)])
def test_bad_examples_are_named(split, index):
  with pytest.raises(ValueError, match=f"example {index} of split '{split}'"):
    scenes.example(split, index)
