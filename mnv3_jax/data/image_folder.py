"""The 'image_folder' dataset: the user's own images, read as users mean them.

Images (JPEG, PNG, BMP or GIF; grayscale is fine) lie under `data_dir` in one of two layouts:
  data_dir/<train_split>/<class>/<image>, data_dir/<eval_split>/<class>/<image>
    (e.g. train/ and validation/); the classes are the train split's class folders, sorted;
  data_dir/<class>/<image>: one pool; a fixed stratified hold-out of each class
    (`folder_holdout_fraction`, chosen by a seeded shuffle of the sorted paths) is eval_split
    and the rest is train_split.
A class folder is a visible subfolder with at least one usable image directly inside it (deeper
folders are not read). Not classes, and named in one WARNING: hidden folders (name starting with
'.', e.g. .ipynb_checkpoints), folders without usable images, and symlinks that resolve to the
folder itself or one of its parents (loops), to the same folder as another class (its images
under a second label), or to nothing (broken or cyclic links). Any other symlinked folder is a
class like a plain one (e.g. images stored elsewhere). Fewer than two classes is an error.

Files are read at run time; nothing is converted or written. When a folder is first listed, the
header of every image is read and every image within `max_image_pixels` is decoded once: files
not named as images, over the limit (never decoded) or that do not decode are skipped, counted in
a WARNING, and training uses the rest. Pillow gives no size for an image it calls a decompression
bomb (over 2 * PIL.Image.MAX_IMAGE_PIXELS, 179 M pixels): such an image is over any limit.
"""
import functools
import os
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from mnv3_jax import defaults

NAME = 'image_folder'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
_EXTENSIONS = '/'.join(IMAGE_EXTENSIONS)
_USABLE, _BROKEN, _TOO_BIG = 0, 1, 2
# (class name, its usable image paths) per class, sorted; {subfolder: why it is not a class}.
Listing = Tuple[Tuple[Tuple[str, Tuple[str, ...]], ...], Dict[str, str]]


def max_image_pixels(data_config) -> int:
  """`data_config.max_image_pixels`, validated (a config saved before it existed: the default)."""
  value = data_config.get('max_image_pixels', defaults.DATA['max_image_pixels'])
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f'config.data.max_image_pixels={value!r} is invalid: need an int >= 1 '
                     f'(width x height; default {defaults.DATA["max_image_pixels"]}).')
  return value


def _header_status(path: bytes, max_pixels: int) -> np.int64:
  """_TOO_BIG if the image's header says more than max_pixels (all of a GIF's frames, which
  tf.io.decode_image decodes), _BROKEN if the header does not read, else _USABLE."""
  try:
    with tf.io.gfile.GFile(path.decode(), 'rb') as f, Image.open(f) as image:
      frames = image.n_frames if image.format == 'GIF' else 1
      pixels = image.width * image.height * frames
  except Image.DecompressionBombError:  # Pillow's own limit (179 M pixels): no size given.
    return np.int64(_TOO_BIG)
  except Exception:  # pylint: disable=broad-except  # Any damage that stops the header stops TF.
    return np.int64(_BROKEN)
  return np.int64(_TOO_BIG if pixels > max_pixels else _USABLE)


def _statuses(paths: List[str], max_pixels: int) -> np.ndarray:
  """(len(paths),) _USABLE, _BROKEN or _TOO_BIG, in one parallel pass that reads every header and
  decodes each image within max_pixels once.

  The pipeline cannot skip a record that fails to decode without shifting every later batch
  (which resuming relies on), so broken files are found before anything is trained.
  """
  if not paths:
    return np.zeros(0, np.int64)
  header = functools.partial(_header_status, max_pixels=max_pixels)

  def check(index, path):
    status = tf.ensure_shape(tf.numpy_function(header, [path], tf.int64, stateful=False), [])

    def decode():
      image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
      return tf.where(tf.size(image) > 0, np.int64(_USABLE), np.int64(_BROKEN))
    return index, tf.cond(status == _USABLE, decode, lambda: status)

  ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), paths))
  ds = ds.map(check, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().batch(4096)
  statuses = np.full(len(paths), _BROKEN, np.int64)  # A decode error drops the record.
  for indices, status in ds.as_numpy_iterator():
    statuses[indices] = status
  return statuses


def _candidates(folder: str) -> Tuple[List[str], Dict[str, str]]:
  """(subfolders that may be classes, {subfolder: why it is not a class}) of `folder`, sorted."""
  names, ignored, real = [], {}, {}
  for name in sorted(f.rstrip('/') for f in tf.io.gfile.listdir(folder)):
    path = os.path.join(folder, name)
    link = os.path.islink(path)  # Never true on gs:// and other non-local file systems.
    if link and not os.path.exists(path):
      ignored[name] = 'a broken or cyclic symlink'
    elif not tf.io.gfile.isdir(path):
      continue
    elif name.startswith('.'):
      ignored[name] = 'hidden'
    elif link:
      target, base = os.path.realpath(path), os.path.realpath(folder)
      if base == target or base.startswith(os.path.join(target, '')):
        ignored[name] = 'a symlink to the folder or a parent'
      else:
        real[name] = target
        names.append(name)
    else:
      names.append(name)
  if real:  # A plain folder keeps its images; a symlink to it (or a second symlink) is dropped.
    owner = {os.path.realpath(os.path.join(folder, n)): n for n in names if n not in real}
    for name in [n for n in names if n in real]:
      if real[name] in owner:
        ignored[name] = f'a symlink to the same folder as {owner[real[name]]!r}'
        names.remove(name)
      else:
        owner[real[name]] = name
  return names, ignored


def _describe(ignored: Dict[str, str]) -> str:
  return ', '.join(f'{name!r} ({why})' for name, why in ignored.items())


@functools.lru_cache(maxsize=8)
def _scan(folder: str, max_pixels: int) -> Listing:
  """The classes of `folder` and their usable images; logs what it skipped (once per folder)."""
  names, ignored = _candidates(folder)
  paths, owners, others = [], [], []
  for name in names:
    for f in sorted(tf.io.gfile.listdir(os.path.join(folder, name))):
      path = os.path.join(folder, name, f)
      if not f.lower().endswith(IMAGE_EXTENSIONS):
        others.append(path)
      elif not tf.io.gfile.isdir(path):
        paths.append(path)
        owners.append(name)
  statuses = _statuses(paths, max_pixels)
  usable = {name: [] for name in names}
  for path, name, status in zip(paths, owners, statuses):
    if status == _USABLE:
      usable[name].append(path)
  with_files = set(owners)
  for name in names:
    if not usable[name]:
      ignored[name] = (f'no usable {_EXTENSIONS} image' if name in with_files else
                       f'no {_EXTENSIONS} files')
  classes = tuple((name, tuple(usable[name])) for name in names if usable[name])
  ignored = dict(sorted(ignored.items()))
  if ignored:
    shown = [name for name, _ in classes]
    logging.warning('image_folder %s: %d subfolders are not classes: %s. %d class(es): %s%s.',
                    folder, len(ignored), _describe(ignored), len(classes), ', '.join(shown[:20]),
                    ', ...' if len(shown) > 20 else '')
  kinds = [(others, f'not named as images ({_EXTENSIONS})'),
           ([p for p, s in zip(paths, statuses) if s == _BROKEN], 'that do not decode'),
           ([p for p, s in zip(paths, statuses) if s == _TOO_BIG],
            f'over max_image_pixels={max_pixels} (width x height, x frames for a GIF)')]
  skipped = sum(len(files) for files, _ in kinds)
  if skipped:
    logging.warning('image_folder %s: skipped %d of %d files: %s. Training on the %d others.',
                    folder, skipped, len(others) + len(paths),
                    '; '.join(f'{len(files)} {what}, e.g. {files[:3]}' for files, what in kinds
                              if files), len(others) + len(paths) - skipped)
  return classes, ignored


@functools.lru_cache(maxsize=8)
def _folder_split(root: str, split: str, train_split: str, eval_split: str, holdout: float,
                  max_pixels: int) -> Tuple[Tuple[str, ...], np.ndarray, np.ndarray]:
  """(classes, paths, labels) of a split of an image folder, in a fixed, class-mixed order."""
  if split not in (train_split, eval_split):
    raise ValueError(f'Split {split!r} of image_folder {root} must be train_split {train_split!r} '
                     f'or eval_split {eval_split!r}.')
  if not tf.io.gfile.isdir(root):
    raise FileNotFoundError(f'image_folder data_dir {root!r} is not a folder.')
  split_folders = tf.io.gfile.isdir(os.path.join(root, train_split))
  class_folder = os.path.join(root, train_split) if split_folders else root
  listing, ignored = _scan(class_folder, max_pixels)
  classes = tuple(name for name, _ in listing)
  if len(classes) < 2:
    raise ValueError(
        f'image_folder {class_folder} has {len(classes)} class folder(s) {list(classes)} (split '
        f'{split!r}); allowed: at least 2 class folders, i.e. visible subfolders each holding at '
        f'least one usable {_EXTENSIONS} image.'
        + (f' Not classes: {_describe(ignored)}.' if ignored else ''))
  if split_folders and split == eval_split:
    folder = os.path.join(root, eval_split)
    listing = _scan(folder, max_pixels)[0] if tf.io.gfile.isdir(folder) else ()
    unknown = {name for name, _ in listing} - set(classes)
    if unknown:
      raise ValueError(f'Classes {sorted(unknown)} of {folder} are not in {class_folder}.')
  label_of = {name: label for label, name in enumerate(classes)}
  paths = [p for _, files in listing for p in files]
  labels = [label_of[name] for name, files in listing for _ in files]
  if not split_folders:
    rng = np.random.default_rng(0)
    held_out = np.zeros(len(paths), bool)
    for label in range(len(classes)):
      members = np.flatnonzero(np.asarray(labels) == label)
      held_out[rng.permutation(members)[:int(round(holdout * len(members)))]] = True
    keep = held_out if split == eval_split else ~held_out
    paths = [p for p, k in zip(paths, keep) if k]
    labels = [l for l, k in zip(labels, keep) if k]
  if not paths:
    raise ValueError(f'No {_EXTENSIONS} images for split {split!r} in {root} '
                     f'(classes: {list(classes)}).')
  order = np.random.default_rng(1).permutation(len(paths))  # Mix classes across process shards.
  return classes, np.asarray(paths)[order], np.asarray(labels, np.int64)[order]


def split(data_config, split_name: str) -> Tuple[Tuple[str, ...], np.ndarray, np.ndarray]:
  """(classes, paths, labels) of split `split_name` of the image folder `data_config.data_dir`."""
  if not data_config.data_dir:
    raise ValueError(f'Invalid config.data.data_dir {data_config.data_dir!r}: dataset='
                     f'{NAME!r} needs a folder of class subfolders (or of split folders '
                     'with class subfolders).')
  return _folder_split(os.fspath(data_config.data_dir), split_name, data_config.train_split,
                       data_config.eval_split, float(data_config.folder_holdout_fraction),
                       max_image_pixels(data_config))
