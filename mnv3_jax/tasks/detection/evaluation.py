"""COCO mAP of a detector over an eval split read in sharded batches by several processes.

Per eval step the trainer calls `DetectionEvaluator.update(detections, batch)` with the step's
detections (`train_step.detect` of the model outputs: fixed-size per image, in pixels of the
network input) and the eval batch (data.py's layout: 'boxes', 'labels', 'valid', 'crowd',
'image_size', 'image_id', 'mask'). Both are gathered to every process with
`multihost_utils.process_allgather` (fixed-size padded arrays: one collective per step, which every
process must join), and the host keeps the real examples (mask 1) only. `compute()` then scales
detections and ground truths from the input's pixels to each image's original pixels (COCO's
small/medium/large areas are in original pixels), orders the images by image id (the result does
not depend on how the split was sharded or batched) and returns `coco_eval.coco_map`'s statistics.
Every process computes the same result.

Passing the arrays: in a run of several processes, pass the global arrays of the step (the batch
as `sharding.to_global` made it, the detections as the jitted step returned them): gathered, they
are the whole global batch in one order. With one process, NumPy arrays of the whole batch work too.
"""
from typing import Dict, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from mnv3_jax.tasks.detection import coco_eval
from mnv3_jax.tasks.detection import nms

BATCH_KEYS = ('boxes', 'labels', 'valid', 'crowd', 'image_size', 'image_id', 'mask')


def _gather(tree):
  """Global value (numpy) of every leaf: global arrays as they are, process-local arrays
  concatenated over processes in process order."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  return multihost_utils.process_allgather(tree, tiled=True)


class DetectionEvaluator:
  """Accumulates detections and ground truths of eval batches; `compute()` gives COCO's mAP.

  input_size: (H, W) of the network input the boxes of `update` are in pixels of.
  """

  def __init__(self, input_size: Sequence[int]):
    if (len(input_size) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1
                                        for v in input_size)):
      raise ValueError(f'Invalid input_size {input_size!r}; allowed: (height, width), integers '
                       '>= 1.')
    self.input_size = tuple(int(v) for v in input_size)
    self._parts = []

  @property
  def num_images(self) -> int:
    """Real (mask 1) examples accumulated so far."""
    return sum(len(p['image_id']) for p in self._parts)

  def update(self, detections: nms.Detections, batch: Dict[str, jax.Array]) -> None:
    """Adds one eval step: detections (N, D, ...) of the batch's N examples; batch: the BATCH_KEYS
    of data.py's eval batch (others, e.g. 'image', are ignored). N is the global batch size."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
      raise ValueError(f'The eval batch lacks {missing}; allowed: a batch with {list(BATCH_KEYS)} '
                       '(data.eval_iterator\'s).')
    dets, truth = _gather((tuple(detections), {k: batch[k] for k in BATCH_KEYS}))
    n = len(truth['mask'])
    if any(len(d) != n for d in dets):
      raise ValueError(f'detections of {[len(d) for d in dets]} examples do not fit a batch of '
                       f'{n}; allowed: one row per example of the batch.')
    real = truth['mask'] > 0
    part = {k: v[real] for k, v in truth.items() if k != 'mask'}
    part.update({f'det_{f}': d[real] for f, d in zip(nms.Detections._fields, dets)})
    self._parts.append(part)

  def compute(self) -> Dict[str, float]:
    """coco_eval.STATS -> value over every image added (module docstring), and 'num_images'."""
    if not self.num_images:
      raise ValueError('No eval examples were added (every mask was 0); allowed: compute() after '
                       'update() with at least one real example.')
    everything = {k: np.concatenate([p[k] for p in self._parts]) for k in self._parts[0]}
    order = np.argsort(everything['image_id'], kind='stable')
    a = {k: v[order] for k, v in everything.items()}
    h, w = self.input_size
    scale = (a['image_size'][:, ::-1].astype(np.float64) / (w, h))    # (N, 2): (W/w, H/h)
    to_original = lambda boxes: boxes * np.tile(scale, 2)[:, None, :]
    stats = coco_eval.coco_map(
        to_original(a['det_boxes']), a['det_scores'], a['det_labels'], a['det_valid'],
        to_original(a['boxes']), a['labels'], a['valid'], a['crowd'])
    return {**stats, 'num_images': len(order)}
