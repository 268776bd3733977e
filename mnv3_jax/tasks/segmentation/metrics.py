"""Semantic-segmentation metrics: a confusion matrix with exact integer counts, mIoU, pixel accuracy.

`confusion_matrix` is pure and jittable: under `jax.jit` with the batch sharded over the mesh's
'data' axis, XLA sums the per-device counts, and over processes the global batch is one array, so
the result is exact on any number of devices and hosts. Rows are true classes, columns predicted
classes. Pixels whose label is `ignore_label` (or any value outside [0, num_classes)) and pixels of
padding examples (mask 0) are not counted.

`ConfusionMatrix` is the clu `Metric` of it, for a `clu_metrics.Collection` like the trainer's
EvalMetrics; `ConfusionMatrix.configure(num_classes)` gives the class to declare. Its counts are
two uint32 words (low, high) merged with a carry, i.e. exact 64-bit counts in jittable uint32
arithmetic (jax has no int64 without x64): Cityscapes' train split alone has 6.2e9 pixels.

mIoU convention (torchvision's reference and the Cityscapes benchmark, as the paper reports it):
IoU_c = TP_c / (TP_c + FP_c + FN_c) for every class c with a nonzero union (c occurs in the
labels or in the predictions); mIoU is the mean over those classes. A class absent from both has
IoU NaN and is left out of the mean.
"""
from typing import Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

from mnv3_jax import defaults

IGNORE_LABEL = defaults.SEGMENTATION_DATA['ignore_label']   # 255


def check_args(labels_shape, predictions_shape, num_classes, ignore_label, mask_shape=None):
  """Raises ValueError naming the first bad argument of `confusion_matrix` (shapes are tuples)."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or (
      num_classes < 1):
    raise ValueError(f'num_classes={num_classes!r} is invalid: need an int >= 1.')
  if isinstance(ignore_label, bool) or not isinstance(ignore_label, (int, np.integer)):
    raise ValueError(f'ignore_label={ignore_label!r} is invalid: need an int.')
  if len(labels_shape) != 3:
    raise ValueError(f'labels of shape {labels_shape} are invalid: need (N, H, W).')
  if tuple(predictions_shape) != tuple(labels_shape):
    raise ValueError(f'predictions of shape {predictions_shape} are invalid: need the labels\' '
                     f'shape {labels_shape}.')
  if mask_shape is not None and tuple(mask_shape) != tuple(labels_shape[:1]):
    raise ValueError(f'mask of shape {mask_shape} is invalid: need ({labels_shape[0]},), one '
                     'value per example.')


def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     ignore_label: int = IGNORE_LABEL,
                     mask: Optional[jax.Array] = None) -> jax.Array:
  """int32 (C, C) counts of pixels of true class i (row) predicted as class j (column).

  labels, predictions: (N, H, W) integers; mask: (N,), nonzero for real examples (padding 0).
  Uncounted: labels equal to `ignore_label` or outside [0, C), predictions outside [0, C), and
  examples with mask 0. Jittable (num_classes and ignore_label static); the sum is an integer
  scatter-add, so it is exact and independent of how the batch is sharded (one batch must hold
  fewer than 2**31 pixels).
  """
  if not jnp.issubdtype(labels.dtype, jnp.integer) or not jnp.issubdtype(
      predictions.dtype, jnp.integer):
    raise ValueError(f'labels ({labels.dtype}) and predictions ({predictions.dtype}) are '
                     'invalid: need integer class maps (argmax the logits first).')
  check_args(labels.shape, predictions.shape, num_classes, ignore_label,
             None if mask is None else mask.shape)
  labels, predictions = labels.astype(jnp.int32), predictions.astype(jnp.int32)
  valid = ((labels != ignore_label) & (labels >= 0) & (labels < num_classes)
           & (predictions >= 0) & (predictions < num_classes))
  if mask is not None:
    valid &= (mask != 0)[:, None, None]
  index = jnp.where(valid, labels * num_classes + predictions, 0)
  counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[index.ravel()].add(
      valid.ravel().astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def scores(confusion) -> dict:
  """{'miou', 'pixel_accuracy', 'mean_accuracy': float, 'iou': float64 (C,)} of (C, C) counts.

  iou[c] is NaN for a class with an empty union; miou averages the others (module docstring).
  mean_accuracy: the mean over classes present in the labels of TP_c / (TP_c + FN_c). All NaN
  when nothing was counted.
  """
  confusion = np.asarray(confusion, np.int64).astype(np.float64)
  tp = np.diag(confusion)
  truth, predicted = confusion.sum(1), confusion.sum(0)
  union = truth + predicted - tp
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = np.where(union > 0, tp / union, np.nan)
    recall = np.where(truth > 0, tp / truth, np.nan)
    total = confusion.sum()
    accuracy = tp.sum() / total if total else np.nan
  present = union > 0
  return {'miou': float(iou[present].mean()) if present.any() else float('nan'),
          'pixel_accuracy': float(accuracy),
          'mean_accuracy': float(np.nanmean(recall)) if (truth > 0).any() else float('nan'),
          'iou': iou}


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """Exact pixel counts (C, C) as uint32 words: count = high * 2**32 + low.

  Use `ConfusionMatrix.configure(num_classes, ignore_label)` in a Collection; its
  `from_model_output(labels=(N, H, W) int, predictions=(N, H, W) int, mask=(N,))` runs under jit,
  `merge` (steps) and `reduce` (devices, clu's pmap style) are exact; `compute()` (on the host,
  NumPy) gives `scores` of the counts.
  """
  low: jax.Array
  high: jax.Array

  num_classes = None   # set by `configure`
  ignore_label = IGNORE_LABEL

  @classmethod
  def configure(cls, num_classes: int, ignore_label: int = IGNORE_LABEL):
    """The subclass counting `num_classes` classes, not counting `ignore_label` pixels."""
    check_args((1, 1, 1), (1, 1, 1), num_classes, ignore_label)
    return flax.struct.dataclass(type(f'ConfusionMatrix{num_classes}', (cls,), {
        'num_classes': int(num_classes), 'ignore_label': int(ignore_label)}))

  @classmethod
  def _classes(cls) -> int:
    if cls.num_classes is None:
      raise ValueError('ConfusionMatrix has no num_classes: use ConfusionMatrix.configure('
                       'num_classes, ignore_label) in the Collection.')
    return cls.num_classes

  @classmethod
  def empty(cls):
    zeros = jnp.zeros((cls._classes(),) * 2, jnp.uint32)
    return cls(low=zeros, high=zeros)

  @classmethod
  def from_model_output(cls, labels: jax.Array, predictions: jax.Array,
                        mask: Optional[jax.Array] = None, **_):
    counts = confusion_matrix(labels, predictions, cls._classes(), cls.ignore_label, mask)
    return cls(low=counts.astype(jnp.uint32), high=jnp.zeros_like(counts, jnp.uint32))

  def merge(self, other: 'ConfusionMatrix') -> 'ConfusionMatrix':
    low = self.low + other.low    # wraps modulo 2**32; the carry goes to the high word
    carry = (low < self.low).astype(jnp.uint32)
    return type(self)(low=low, high=self.high + other.high + carry)

  def counts(self) -> np.ndarray:
    """int64 (C, C) counts, on the host."""
    low, high = (np.asarray(jax.device_get(x), np.uint64) for x in (self.low, self.high))
    return (high * np.uint64(2**32) + low).astype(np.int64)

  def compute(self) -> dict:
    return scores(self.counts())
