"""One process of test_metrics' 2-process run, and the data both the test and the processes use.

  python -m tests.tasks.segmentation.metrics_worker PORT PROCESS_ID OUT.npy
joins a 2-process cluster on 127.0.0.1:PORT (XLA_FLAGS sets the devices per process), counts its
even shard of `dataset()` in padded batches of LOCAL_BATCH through `ConfusionMatrix` under jit,
and process 0 saves the merged int64 counts to OUT.npy.
"""
import sys

import numpy as np

NUM_IMAGES, NUM_CLASSES, SIZE, LOCAL_BATCH = 37, 5, 6, 8
IGNORE = 255


def dataset(seed=0):
  """(labels, predictions) uint8/int32 (NUM_IMAGES, SIZE, SIZE): about 10% ignore pixels, and
  predictions that equal the label about half the time."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, (NUM_IMAGES, SIZE, SIZE))
  labels = np.where(rng.random(labels.shape) < 0.1, IGNORE, labels).astype(np.int32)
  guess = rng.integers(0, NUM_CLASSES, labels.shape)
  predictions = np.where(rng.random(labels.shape) < 0.5, labels % IGNORE, guess)
  return labels, predictions.astype(np.int32)


def shard(array, index, count):
  """Shard `index` of `count` of the leading axis, sized as tfds.even_splits."""
  sizes = [len(array) // count + (i < len(array) % count) for i in range(count)]
  start = sum(sizes[:index])
  return array[start:start + sizes[index]]


def padded_batches(labels, predictions, batch, num_batches):
  """num_batches dicts {'labels', 'predictions', 'mask'} of `batch` examples; padding has mask 0
  and labels/predictions 0 (a real class: only the mask keeps it out)."""
  n = num_batches * batch
  mask = np.arange(n) < len(labels)
  pad = lambda a: np.concatenate([a, np.zeros((n - len(a),) + a.shape[1:], a.dtype)])
  labels, predictions = pad(labels), pad(predictions)
  return [{'labels': labels[i:i + batch], 'predictions': predictions[i:i + batch],
           'mask': mask[i:i + batch].astype(np.float32)} for i in range(0, n, batch)]


def count(batches, mesh):
  """int64 (C, C) counts of the (process-local) batches through jit over `mesh`."""
  import jax  # pylint: disable=g-import-not-at-top
  from clu import metrics as clu_metrics  # pylint: disable=g-import-not-at-top
  from mnv3_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  from mnv3_jax.tasks.segmentation import metrics  # pylint: disable=g-import-not-at-top
  collection = clu_metrics.Collection.create(
      confusion=metrics.ConfusionMatrix.configure(NUM_CLASSES, IGNORE))
  step = jax.jit(lambda b: collection.single_from_model_output(**b),
                 in_shardings=(sharding.batch_sharded(mesh),),
                 out_shardings=sharding.replicated(mesh))
  total = None
  for batch in batches:
    update = step(sharding.to_global(batch, mesh))
    total = update if total is None else total.merge(update)
  return total.confusion.counts()


def main(port, process_id, out):
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(f'127.0.0.1:{port}', num_processes=2, process_id=int(process_id))
  from mnv3_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  labels, predictions = (shard(a, jax.process_index(), 2) for a in dataset())
  num_batches = -(-(NUM_IMAGES - NUM_IMAGES // 2) // LOCAL_BATCH)   # of the bigger shard
  counts = count(padded_batches(labels, predictions, LOCAL_BATCH, num_batches),
                 sharding.make_mesh())
  if jax.process_index() == 0:
    np.save(out, counts)
  print('process', jax.process_index(), 'of', jax.process_count(), 'devices',
        jax.local_device_count(), jax.device_count())


if __name__ == '__main__':
  main(*sys.argv[1:])
