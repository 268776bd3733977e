"""One process of test_evaluation's 2-process run, and the data both the test and the processes use.

  python -m tests.tasks.detection.evaluation_worker PORT PROCESS_ID OUT.json
joins a 2-process cluster on 127.0.0.1:PORT (XLA_FLAGS sets the devices per process), evaluates
its even shard of `dataset()` in padded batches of LOCAL_BATCH (detections jitted over the mesh of
all devices, gathered by `DetectionEvaluator`), and process 0 writes the statistics to OUT.json.
"""
import json
import sys

import numpy as np

NUM_IMAGES, NUM_CLASSES, G, LOCAL_BATCH = 37, 4, 3, 8
INPUT = (64, 64)
GT_KEYS = ('boxes', 'labels', 'valid', 'crowd', 'image_size', 'image_id')


def dataset(seed=0):
  """Raw SSDLite outputs for a 64x64 input and the ground truths of NUM_IMAGES images: each ground
  truth's best default box regresses to it (jittered) with a confident, mostly right class; every
  other default box predicts weak random classes. Ids are shuffled; originals 80-200 px a side."""
  from mnv3_jax.tasks.detection import anchors, box_coder  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  default = anchors.default_boxes(INPUT)
  a = len(default)
  lo = rng.uniform(0, 40, (NUM_IMAGES, G, 2))
  boxes = np.concatenate([lo, lo + rng.uniform(10, 24, (NUM_IMAGES, G, 2))], -1)
  valid = np.arange(G)[None] < rng.integers(1, G + 1, (NUM_IMAGES, 1))
  labels = np.where(valid, rng.integers(1, NUM_CLASSES, (NUM_IMAGES, G)), 0)
  crowd = valid & (rng.random(valid.shape) < 0.1)
  regression = rng.normal(0, 0.5, (NUM_IMAGES, a, 4))
  logits = rng.normal(0, 1, (NUM_IMAGES, a, NUM_CLASSES)) + [2.0, 0, 0, 0]
  iou = np.asarray(box_coder.box_iou(boxes.reshape(-1, 4).astype(np.float32), default))
  best = iou.argmax(1).reshape(NUM_IMAGES, G)
  for i, g in zip(*np.nonzero(valid)):
    jittered = boxes[i, g] + rng.normal(0, 2, 4)
    regression[i, best[i, g]] = np.asarray(box_coder.encode(jittered, default[best[i, g]]))
    label = labels[i, g] if rng.random() < 0.8 else rng.integers(1, NUM_CLASSES)
    logits[i, best[i, g], label] = 4 + rng.normal()
  return {'box_regression': regression.astype(np.float32), 'cls_logits': logits.astype(np.float32),
          'boxes': np.where(valid[..., None], boxes, 0).astype(np.float32),
          'labels': labels.astype(np.int32), 'valid': valid, 'crowd': crowd,
          'image_size': rng.integers(80, 201, (NUM_IMAGES, 2)).astype(np.int32),
          'image_id': (500 + rng.permutation(NUM_IMAGES)).astype(np.int32)}


def shard(examples, index, count):
  """Shard `index` of `count` of every array's leading axis, sized as tfds.even_splits."""
  sizes = [NUM_IMAGES // count + (i < NUM_IMAGES % count) for i in range(count)]
  start = sum(sizes[:index])
  return {k: v[start:start + sizes[index]] for k, v in examples.items()}


def padded_batches(examples, batch, num_batches):
  """num_batches dicts of `batch` examples with 'mask'; padding repeats the first example's model
  outputs (it would add false detections if counted) with no valid ground truth."""
  n, real = num_batches * batch, len(examples['image_id'])
  take = np.concatenate([np.arange(real), np.zeros(n - real, int)])
  padded = {k: v[take] for k, v in examples.items()}
  padded['valid'] = padded['valid'] & (np.arange(n) < real)[:, None]
  padded['crowd'] &= padded['valid']
  padded['mask'] = (np.arange(n) < real).astype(np.float32)
  return [{k: v[i:i + batch] for k, v in padded.items()} for i in range(0, n, batch)]


def evaluate(batches, mesh):
  """COCO statistics of the (process-local) batches: detect jitted over `mesh`, then evaluation."""
  import jax  # pylint: disable=g-import-not-at-top
  from mnv3_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  from mnv3_jax.tasks.detection import evaluation, train_step  # pylint: disable=g-import-not-at-top
  detect = jax.jit(lambda b, c: train_step.detect((b, c), INPUT),
                   in_shardings=(sharding.batch_sharded(mesh),) * 2)
  evaluator = evaluation.DetectionEvaluator(INPUT)
  for batch in batches:
    batch = sharding.to_global(batch, mesh)
    evaluator.update(detect(batch['box_regression'], batch['cls_logits']), batch)
  return evaluator.compute()


def main(port, process_id, out):
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(f'127.0.0.1:{port}', num_processes=2, process_id=int(process_id))
  from mnv3_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  examples = shard(dataset(), jax.process_index(), 2)
  num_batches = -(-(NUM_IMAGES - NUM_IMAGES // 2) // LOCAL_BATCH)   # of the bigger shard
  stats = evaluate(padded_batches(examples, LOCAL_BATCH, num_batches), sharding.make_mesh())
  if jax.process_index() == 0:
    with open(out, 'w') as f:
      json.dump(stats, f)
  print('process', jax.process_index(), 'of', jax.process_count(), 'devices',
        jax.local_device_count(), jax.device_count())


if __name__ == '__main__':
  main(*sys.argv[1:])
