"""mnv3_jax/tasks/detection/data.py, data_augment.py, data_sources.py: boxes that move with the
image, SSD's IoU crop, process shards, resumption, masked eval padding, the known datasets."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mnv3_jax.tasks.detection import data
from mnv3_jax.tasks.detection import data_augment
from mnv3_jax.tasks.detection import scenes

PALETTE = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220], [230, 230, 230]], np.float32)
SIZES = ((60, 80), (90, 50), (70, 70))   # (height, width) of the stand-in images


def coded_example(rng, index):
  """A black image with up to 5 non-overlapping solid boxes coloured by their COCO label 0..2;
  the last box, white (label 3), is a crowd region. Returns (image, bbox, label, crowd)."""
  h, w = SIZES[index % 3]
  image = np.zeros((h, w, 3), np.uint8)
  boxes, labels = [], []
  for i, (top, left) in enumerate([(0.05, 0.05), (0.05, 0.55), (0.55, 0.05), (0.55, 0.55)]):
    if rng.random() < 0.8 or i == 0:
      side_y, side_x = rng.uniform(0.2, 0.4, 2)
      y1, x1 = int(top * h), int(left * w)
      y2, x2 = y1 + max(int(side_y * h), 8), x1 + max(int(side_x * w), 8)
      label = 3 if i == 3 else int(rng.integers(3))
      image[y1:y2, x1:x2] = PALETTE[label]
      boxes.append([y1 / h, x1 / w, y2 / h, x2 / w])
      labels.append(label)
  labels = np.array(labels)
  return image, np.array(boxes, np.float32), labels, labels == 3


def coco_example(rng, index):
  image, bbox, label, crowd = coded_example(rng, index)
  n = len(label)
  return {'image': image, 'image/filename': f'{index}.jpg', 'image/id': 1000 + index,
          'objects': {'area': np.ones(n, np.int64), 'bbox': bbox, 'id': np.arange(n),
                      'is_crowd': crowd, 'label': label}}


@pytest.fixture(scope='module')
def coco_dir(tmp_path_factory):
  """An on-disk 'coco/2017' (its real features) that plain tfds reads: train 24, validation 11."""
  path = str(tmp_path_factory.mktemp('coco'))
  rng = np.random.default_rng(0)
  tfds.dataset_builders.store_as_tfds_dataset(
      name='coco', config='2017', version='1.1.0', data_dir=path,
      features=tfds.builder('coco/2017').info.features,
      split_datasets={s: [(i, coco_example(rng, i)) for i in range(n)]
                      for s, n in (('train', 24), ('validation', 11))},
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return path


def config(**overrides):
  cfg = data.default_data_config()
  cfg.update(overrides)
  return cfg


def decoded_labels(batch, boxes=None):
  """(label, colour, share) per valid box of a batch (`boxes` instead of the batch's): the
  palette index of most of its interior pixels (box shrunk by 2 px: bilinear blends the edges)
  and the share of them that have it; boxes with fewer than 4 interior pixels are skipped."""
  out = []
  boxes = batch['boxes'] if boxes is None else boxes
  for image, image_boxes, labels, valid in zip((batch['image'] + 1) * 127.5, boxes,
                                               batch['labels'], batch['valid']):
    for (x1, y1, x2, y2), label in zip(np.round(image_boxes[valid]).astype(int), labels[valid]):
      inner = image[y1 + 2:y2 - 2, x1 + 2:x2 - 2].reshape(-1, 3)
      if len(inner) >= 4:
        votes = np.bincount(np.argmin(np.linalg.norm(inner[:, None] - PALETTE, axis=-1), 1),
                            minlength=4)
        out.append((label, np.argmax(votes), votes.max() / len(inner)))
  return out


def test_training_boxes_move_with_the_image_and_crowds_are_dropped(coco_dir):
  cfg = config(dataset='coco/2017', data_dir=coco_dir, image_size=64, max_boxes=6)
  assert data.get_dataset_info(cfg) == data.DatasetInfo(81, 6, 24, 11)
  it = data.train_iterator(cfg, global_batch_size=8, seed=0, start_step=0, process_index=0,
                           process_count=1)
  batches = [next(it) for _ in range(12)]   # 4 epochs
  b = {k: np.concatenate([x[k] for x in batches]) for k in batches[0]}
  assert b['image'].shape == (96, 64, 64, 3) and b['image'].dtype == np.float32
  assert b['boxes'].shape == (96, 6, 4) and b['labels'].dtype == np.int32
  assert b['valid'].dtype == bool and -1 <= b['image'].min() and b['image'].max() <= 1
  valid = b['valid']
  assert set(np.unique(b['labels'][valid])) == {1, 2, 3}   # COCO 0..2 -> 1..3; no crowd (4)
  assert not b['labels'][~valid].any() and not b['boxes'][~valid].any()
  sides = b['boxes'][..., 2:] - b['boxes'][..., :2]
  assert (sides[valid] >= 1).all() and (b['boxes'][valid] >= 0).all()
  assert (b['boxes'][valid] <= 64).all()
  decoded = decoded_labels(b)
  assert len(decoded) > 100
  for label, colour, share in decoded:
    assert colour == label - 1 and share > 0.9, (label, colour, share)
  # Crops happened: some boxes are larger than any uncropped one (sides <= 0.4 of the image + 1).
  assert (sides[valid] / 64 > 0.45).any()
  # Flips: without crops, some image is another epoch's image of the same record, mirrored.
  cfg.crop_min_ious = (1.0,)
  it = data.train_iterator(cfg, global_batch_size=24, seed=0, start_step=0, process_index=0,
                           process_count=1)
  epochs = [next(it)['image'] for _ in range(2)]
  same = {im.tobytes() for im in epochs[0]} & {im.tobytes() for im in epochs[1]}
  mirrored = {im[:, ::-1].tobytes() for im in epochs[0]} & {im.tobytes() for im in epochs[1]}
  assert same and mirrored and len(same) + len(mirrored) >= 24


def test_the_colour_check_fails_for_boxes_not_moved_with_the_image(coco_dir):
  cfg = config(dataset='coco/2017', data_dir=coco_dir, image_size=64, max_boxes=6)
  batch = next(data.train_iterator(cfg, global_batch_size=24, seed=0, start_step=0,
                                   process_index=0, process_count=1))
  mirrored = batch['boxes'][..., [2, 1, 0, 3]] * [-1, 1, -1, 1] + [64, 0, 64, 0]
  right = decoded_labels(batch)
  wrong = decoded_labels(batch, mirrored)
  assert all(colour == label - 1 and share > 0.9 for label, colour, share in right)
  assert np.mean([colour == label - 1 and share > 0.9 for label, colour, share in wrong]) < 0.5


def crop_windows(boxes, min_ious, seeds, **kwargs):
  boxes = tf.constant(boxes, tf.float32)
  for seed in seeds:
    window = data_augment.iou_crop_window(100, 200, boxes, tf.constant([seed, 1], tf.int64),
                                          min_ious, **kwargs)
    yield [int(v) for v in window[:4]], bool(window[4])


def iou(a, b):
  lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
  inter = np.prod(np.maximum(hi - lo, 0))
  return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


@pytest.mark.parametrize('min_iou', [0.1, 0.5, 0.9])
def test_iou_crop_meets_its_constraints(min_iou):
  boxes = np.array([[10, 10, 60, 50], [120, 30, 190, 95], [30, 10, 170, 90]], np.float32)
  cropped = 0
  for (top, left, h, w), was_cropped in crop_windows(boxes, (min_iou,), range(40)):
    if not was_cropped:
      assert (top, left, h, w) == (0, 0, 100, 200)
      continue
    cropped += 1
    assert 0.5 <= w / h <= 2 and 0.3 * 200 - 1 <= w <= 200 and 0.3 * 100 - 1 <= h <= 100
    assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 200
    crop = np.array([left, top, left + w, top + h], np.float32)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = np.all((centres > crop[:2]) & (centres < crop[2:]), axis=1)
    assert inside.any() and max(iou(b, crop) for b in boxes[inside]) >= min_iou
  assert cropped >= (30 if min_iou < 0.9 else 5), cropped
  assert all(not c for _, c in crop_windows(boxes, (1.0,), range(10)))   # 1.0: never crop
  assert all(not c for _, c in crop_windows(np.zeros((0, 4)), (0.1,), range(5)))   # no boxes


def test_crop_keeps_the_boxes_whose_centre_is_inside_clipped():
  image = tf.zeros([100, 200, 3])
  boxes = tf.constant([[10, 10, 60, 50], [100, 30, 170, 95], [0, 0, 30, 30]], tf.float32)
  out_image, out_boxes, out_labels = data_augment.crop(
      image, boxes, tf.constant([1, 2, 3]), (20, 25, 60, 120, tf.constant(True)))
  assert out_image.shape == (60, 120, 3)
  np.testing.assert_allclose(out_boxes, [[0, 0, 35, 30], [75, 10, 120, 60]])
  assert out_labels.numpy().tolist() == [1, 2]   # [0, 0, 30, 30]: centre (15, 15) is outside


def test_train_shards_are_disjoint_cover_the_split_and_resume(det_shapes_dir):
  cfg = config(data_dir=str(det_shapes_dir), train_split='train[:40]', crop_min_ious=(1.0,),
               random_flip=False)   # an identity transform at 128 px: the stored images
  def first_epoch(process):
    it = data.train_iterator(cfg, global_batch_size=8, seed=0, start_step=0,
                             process_index=process, process_count=2)
    return np.concatenate([next(it)['image'] for _ in range(5)])   # 20 examples a process
  seen = [{np.round((im + 1) * 127.5).astype(np.uint8).tobytes() for im in first_epoch(p)}
          for p in (0, 1)]
  assert len(seen[0]) == len(seen[1]) == 20 and not seen[0] & seen[1]
  assert seen[0] | seen[1] == {ex['image'].tobytes() for ex in tfds.as_numpy(
      tfds.builder(scenes.NAME, data_dir=det_shapes_dir).as_dataset(split='train[:40]'))}
  cfg.update(crop_min_ious=data.DEFAULTS['crop_min_ious'], random_flip=True)
  run = data.train_iterator(cfg, global_batch_size=8, seed=1, start_step=0, process_index=1,
                            process_count=2)
  later = [next(run) for _ in range(7)][-1]
  resumed = next(data.train_iterator(cfg, global_batch_size=8, seed=1, start_step=6,
                                     process_index=1, process_count=2))
  for key in later:
    np.testing.assert_array_equal(resumed[key], later[key])


def test_eval_padding_is_masked_and_every_example_counted_once(coco_dir):
  cfg = config(dataset='coco/2017', data_dir=coco_dir, image_size=64, max_boxes=5)
  stored = {int(ex['image/id']): ex for ex in tfds.as_numpy(
      tfds.builder('coco/2017', data_dir=coco_dir).as_dataset(split='validation'))}
  seen, counts = set(), []
  for process in range(3):   # shards 4, 4, 3; local batches of 3: 2 batches each, 7 padded slots
    batches = list(data.eval_iterator(cfg, global_batch_size=9, process_index=process,
                                      process_count=3))
    counts.append(len(batches))
    for b in batches:
      assert b['image'].shape == (3, 64, 64, 3) and b['mask'].dtype == np.float32
      for i in range(3):
        if b['mask'][i] == 0:
          assert not b['valid'][i].any() and b['image_id'][i] == -1
          continue
        ex = stored[int(b['image_id'][i])]
        assert b['image_id'][i] not in seen
        seen.add(int(b['image_id'][i]))
        h, w = ex['image'].shape[:2]
        assert b['image_size'][i].tolist() == [h, w]
        n = len(ex['objects']['label'])
        assert b['valid'][i].tolist() == [True] * n + [False] * (5 - n)
        want = ex['objects']['bbox'][:, [1, 0, 3, 2]] * 64
        np.testing.assert_allclose(b['boxes'][i, :n], want, rtol=1e-6)
        assert b['labels'][i, :n].tolist() == (ex['objects']['label'] + 1).tolist()
        assert b['crowd'][i, :n].tolist() == ex['objects']['is_crowd'].tolist()
  assert counts == [2, 2, 2] and seen == set(stored)
  with pytest.raises(Exception, match=r'config.data.max_boxes=3 must be at least'):
    list(data.eval_iterator(config(dataset='coco/2017', data_dir=coco_dir, max_boxes=3),
                            global_batch_size=11, process_index=0, process_count=1))


def test_voc_ids_come_from_file_names_and_difficult_objects_are_ignored(tmp_path):
  rng = np.random.default_rng(1)
  def voc_example(index):
    image, bbox, label, hard = coded_example(rng, index)
    n = len(label)
    return {'image': image, 'image/filename': f'2008_{index:06d}.jpg',
            'labels': np.unique(label), 'labels_no_difficult': np.unique(label[~hard]),
            'objects': {'bbox': bbox, 'is_difficult': hard, 'is_truncated': np.zeros(n, bool),
                        'label': label, 'pose': np.zeros(n, np.int64)}}
  tfds.dataset_builders.store_as_tfds_dataset(
      name='voc', config='2012', version='5.0.0', data_dir=str(tmp_path),
      features=tfds.builder('voc/2012').info.features,
      split_datasets={s: [(i, voc_example(i)) for i in range(4)] for s in ('train', 'validation')},
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  cfg = config(dataset='voc/2012', data_dir=str(tmp_path), image_size=64, max_boxes=5)
  assert data.get_dataset_info(cfg) == data.DatasetInfo(21, 5, 4, 4)
  (batch,) = data.eval_iterator(cfg, global_batch_size=4, process_index=0, process_count=1)
  assert sorted(batch['image_id'].tolist()) == [2008000000, 2008000001, 2008000002, 2008000003]
  assert (batch['crowd'] == (batch['labels'] == 4) & batch['valid']).all() and batch['crowd'].any()
  train = next(data.train_iterator(cfg, global_batch_size=4, seed=0, start_step=0,
                                   process_index=0, process_count=1))
  assert train['valid'].any() and 4 not in train['labels'][train['valid']]


def test_unprepared_datasets_and_bad_fields_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"'voc/2007' is not prepared.*tfds build voc/2007"):
    data.get_dataset_info(config(dataset='voc/2007', data_dir=str(tmp_path)))
  for overrides, match in [
      (dict(dataset='coco'), r"dataset='coco' is not a known detection dataset; allowed: \["),
      (dict(image_size=16), r'image_size=16 is invalid: need an int >= 32'),
      (dict(max_boxes=0), r'max_boxes=0 is invalid'),
      (dict(crop_min_ious=(0.5, 1.5)), r'crop_min_ious=\(0.5, 1.5\) is invalid'),
      (dict(crop_scale_range=(0.0, 1.0)), r'crop_scale_range=\(0.0, 1.0\) is invalid'),
      (dict(crop_aspect_range=(2.0, 0.5)), r'crop_aspect_range=\(2.0, 0.5\) is invalid'),
      (dict(crop_trials=0), r'crop_trials=0 is invalid'),
      (dict(num_parallel_calls=0), r'num_parallel_calls=0 is invalid')]:
    with pytest.raises(ValueError, match=match):
      data.check_config(config(**overrides))
  with pytest.raises(ValueError, match=r'global_batch_size=5 must be a positive multiple'):
    data.train_iterator(config(), global_batch_size=5, seed=0, start_step=0, process_index=0,
                        process_count=2)


def test_the_coco_config_trains_torchvisions_ssdlite_on_tfds_labels(coco_dir, tmp_path):
  """configs/detection.py:dataset=coco/2017 over the on-disk stand-in passes preflight and builds
  torchvision's ssdlite320_mobilenet_v3_large with 81 classes: 3,301,460 params (its COCO weights
  import into it with classes='coco_contiguous')."""
  from configs import detection  # pylint: disable=g-import-not-at-top
  from mnv3_jax.model import summary  # pylint: disable=g-import-not-at-top
  from mnv3_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  from mnv3_jax.train import preflight  # pylint: disable=g-import-not-at-top
  config = detection.get_config('dataset=coco/2017')
  config.data.data_dir = coco_dir
  checked = preflight.check_config(config, str(tmp_path / 'run'), sharding.make_mesh())
  assert (checked.info.num_classes, checked.info.num_train_examples) == (81, 24)
  model = checked.task.build_model(checked.info)
  assert summary.summarize(model, (320, 320))['params'] == 3_301_460
  line, = checked.task.header_lines(model, checked.info)
  assert line.startswith("SSDLite MobileNetV3-Large 1.0 (reduced tail 'torchvision'")
  assert '80 classes + background, 3234 default boxes' in line
