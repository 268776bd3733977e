"""Box-aware transforms of one example on tf.data: SSD's IoU-constrained random crop, horizontal
flip, resize to a square, and boxes padded to a fixed count with a valid mask.

Boxes here are float32 (n, 4) (x1, y1, x2, y2) in pixels of the current image; images float32
(h, w, 3). Randomness comes from stateless seeds (2,) int64, so an example's transform is a pure
function of its seed.

The crop is torchvision's `RandomIoUCrop` (SSD's "sample a patch"), without its unbounded loop:
draw a minimum IoU from `min_ious` (1.0 or more: keep the whole image); then up to `trials`
candidate crops, each with sides (w·r_w, h·r_h) for r ~ U(scale_range) (floored to pixels),
aspect w'/h' in `aspect_range`, at a uniform position; a candidate is taken when some box has its
centre strictly inside it and the largest IoU of those boxes with the crop is >= the minimum IoU.
Boxes whose centre lies outside the taken crop are dropped, the others clipped to it. When a
round of trials finds nothing, a new minimum IoU is drawn (torchvision loops until it succeeds;
here after `rounds` rounds the whole image is kept).
"""
import tensorflow as tf

DEFAULT_ROUNDS = 8   # P(no crop for lack of a fitting one) is tiny on real data; bounded work


def _iou_with(boxes, crops):
  """IoU of every crop (T, 4) with every box (n, 4): (T, n); all (x1, y1, x2, y2)."""
  lo = tf.maximum(crops[:, None, :2], boxes[None, :, :2])
  hi = tf.minimum(crops[:, None, 2:], boxes[None, :, 2:])
  inter = tf.reduce_prod(tf.maximum(hi - lo, 0.0), axis=-1)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  union = area(crops)[:, None] + area(boxes)[None, :] - inter
  return tf.math.divide_no_nan(inter, union)


def iou_crop_window(height, width, boxes, seed, min_ious, scale_range=(0.3, 1.0),
                    aspect_range=(0.5, 2.0), trials=40, rounds=DEFAULT_ROUNDS):
  """The crop window (top, left, crop_h, crop_w) int32 scalars and a bool `cropped` of an
  (height, width) image holding `boxes` (module docstring). Not cropped: (0, 0, height, width)."""
  option_seed, scale_seed, place_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  count = rounds * trials
  options = tf.gather(tf.constant(min_ious, tf.float32), tf.random.stateless_uniform(
      [rounds], option_seed, 0, len(min_ious), tf.int32))
  options = tf.repeat(options, trials)                                           # (R·T,)
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  lo, hi = scale_range
  r = lo + (hi - lo) * tf.random.stateless_uniform([count, 2], scale_seed)
  crop_w, crop_h = tf.floor(w * r[:, 0]), tf.floor(h * r[:, 1])
  aspect = tf.math.divide_no_nan(crop_w, crop_h)
  u = tf.random.stateless_uniform([count, 2], place_seed)
  left, top = tf.floor((w - crop_w) * u[:, 0]), tf.floor((h - crop_h) * u[:, 1])
  crops = tf.stack([left, top, left + crop_w, top + crop_h], axis=-1)            # (R·T, 4)
  cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
  inside = ((crops[:, 0:1] < cx[None]) & (cx[None] < crops[:, 2:3]) &
            (crops[:, 1:2] < cy[None]) & (cy[None] < crops[:, 3:4]))            # (R·T, n)
  best = tf.reduce_max(tf.where(inside, _iou_with(boxes, crops), -1.0), axis=1)
  fits = ((crop_w > 0) & (crop_h > 0) & (aspect >= aspect_range[0]) & (aspect <= aspect_range[1])
          & tf.reduce_any(inside, axis=1) & (best >= options))
  whole = options >= 1.0
  # A round whose option means "no crop" succeeds at once, with the whole image.
  first_of_round = tf.range(count) % trials == 0
  ok = tf.where(whole, first_of_round, fits)
  chosen = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)   # first True (0 if none)
  cropped = ok[chosen] & ~whole[chosen]
  window = tf.cast(tf.stack([top[chosen], left[chosen], crop_h[chosen], crop_w[chosen]]),
                   tf.int32)
  full = tf.stack([0, 0, tf.cast(height, tf.int32), tf.cast(width, tf.int32)])
  return (*tf.unstack(tf.where(cropped, window, full)), cropped)


def crop(image, boxes, labels, window):
  """Crops image, boxes and labels to `window` (top, left, h, w, cropped): boxes whose centre is
  not strictly inside a taken crop are dropped, the rest clipped and shifted to its corner."""
  top, left, crop_h, crop_w, cropped = window
  image = image[top:top + crop_h, left:left + crop_w]
  t, l = tf.cast(top, tf.float32), tf.cast(left, tf.float32)
  b, r = t + tf.cast(crop_h, tf.float32), l + tf.cast(crop_w, tf.float32)
  cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
  keep = ~cropped | ((l < cx) & (cx < r) & (t < cy) & (cy < b))
  low, high = tf.stack([l, t, l, t]), tf.stack([r, b, r, b])
  boxes = tf.clip_by_value(boxes, low, high) - low
  return image, tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)


def flip(image, boxes):
  """Left-right mirror of an image (h, w, 3) and its boxes."""
  w = tf.cast(tf.shape(image)[1], tf.float32)
  return image[:, ::-1], tf.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)


def resize(image, boxes, size: int):
  """Image (h, w, 3) -> float32 (size, size, 3), bilinear (aspect not kept); boxes scaled along."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  sy, sx = size / shape[0], size / shape[1]
  image = tf.image.resize(tf.cast(image, tf.float32), [size, size], method='bilinear')
  return image, boxes * tf.stack([sx, sy, sx, sy])


def pad_boxes(max_boxes: int, boxes, *columns):
  """(boxes (G, 4), *columns (G,), valid (G,) bool): the first max_boxes rows, zero-padded."""
  n = tf.minimum(tf.shape(boxes)[0], max_boxes)
  pad = lambda x: tf.pad(x[:n], [[0, max_boxes - n]] + [[0, 0]] * (len(x.shape) - 1))
  valid = tf.range(max_boxes) < n
  return (tf.ensure_shape(pad(boxes), [max_boxes, 4]),
          *(tf.ensure_shape(pad(c), [max_boxes]) for c in columns), valid)
