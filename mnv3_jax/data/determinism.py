"""What the three tf.data pipelines share: per-process batches, the deterministic training order.

Used by mnv3_jax/data/input_pipeline.py (classification), mnv3_jax/tasks/segmentation/data.py and
mnv3_jax/tasks/detection/data.py. Each process reads its own shard of a split (`shard_sizes[p]`
records, in the shard's stored order) and batches B = global_batch_size // process_count examples.

Training order (`train_examples`), deterministic given (seed, process_index, shard): the shard is
read endlessly, epoch after epoch without a gap (a batch can span two epochs). Record j of the
shard in epoch e is numbered n = e * N + j (N = the shard's size), and epoch e is shuffled by a
buffer of min(shuffle_buffer, N) records seeded by (seed, process_index, e). Each record's
augmentation draws from a stateless seed keyed on (seed, process_index, n), so it does not depend
on where the shuffle puts the record. Step k's batch is records k*B .. (k+1)*B - 1 of that endless
shuffled sequence, so starting at step k yields exactly the batches k, k+1, ... of a run started
at step 0: it starts at epoch k*B // N and skips the rest on undecoded records.
"""
from typing import Callable, Iterator, Sequence

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
  """Examples per batch of one process: global_batch_size // process_count.

  Raises ValueError unless 0 <= process_index < process_count and global_batch_size is a positive
  multiple of process_count.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
        f'process_index={process_index} must be in [0, process_count={process_count}).')
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} must be a positive multiple of '
                     f'process_count={process_count}.')
  return global_batch_size // process_count


def first_record(start_step: int, batch_size: int) -> int:
  """The number of step `start_step`'s first record in the endless training sequence
  (start_step * batch_size, batch_size per process); ValueError if start_step < 0."""
  if start_step < 0:
    raise ValueError(f'start_step={start_step} must be >= 0.')
  return start_step * batch_size


def train_examples(records: tf.data.Dataset, example: Callable, *, shard_sizes: Sequence[int],
                   process_index: int, split: str, seed: int, first: int, shuffle_buffer: int,
                   num_parallel_calls: int) -> tf.data.Dataset:
  """The endless training examples of this process from record number `first` on (module doc).

  records: this process's shard, shard_sizes[process_index] records in their stored order, the
    same every time it is read (any structure; undecoded, as shuffling and skipping read them).
  example: (seed int64 (2,): a stateless seed keyed on (seed, process_index, record number),
    record) -> the example, mapped in parallel (`num_parallel_calls`) in a deterministic order.
  Raises ValueError if this process's shard of `split` is empty.
  """
  num_examples = shard_sizes[process_index]
  if not num_examples:
    raise ValueError(f'Process {process_index} of {len(shard_sizes)} has no examples of '
                     f'{split!r} (sizes {shard_sizes}).')
  buffer = min(shuffle_buffer, num_examples)
  shuffle_key, example_key = tf.unstack(tf.random.experimental.stateless_split(
      tf.constant([seed, process_index], tf.int64), 2))

  def epoch(e):
    # Records numbered e * num_examples + j (j: place in the shard), then shuffled.
    shuffle_seed = tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(shuffle_key, e), minval=None, maxval=None,
        dtype=tf.int64)
    return records.enumerate(start=e * num_examples).shuffle(
        buffer, seed=shuffle_seed, reshuffle_each_iteration=False)

  def keyed_example(number, record):
    return example(tf.random.experimental.stateless_fold_in(example_key, number), record)

  ds = tf.data.Dataset.range(first // num_examples, 2**62).flat_map(epoch)
  ds = ds.skip(first % num_examples)
  return ds.map(keyed_example, num_parallel_calls=num_parallel_calls, deterministic=True)


def eval_padding(shard_sizes: Sequence[int], process_index: int, batch_size: int) -> int:
  """Padding examples this process appends to its eval shard so that every process yields
  ceil(max shard size / batch_size) batches of batch_size examples."""
  num_batches = -(-max(shard_sizes) // batch_size)
  return num_batches * batch_size - shard_sizes[process_index]


def numpy_batches(ds: tf.data.Dataset, batch_size: int, *,
                  drop_remainder: bool = False) -> Iterator[dict]:
  """Batches of `ds`'s dict examples as numpy dicts, 'image' [0, 255] scaled to [-1, 1]
  (`to_unit_range`), prefetched, under `deterministic_options`."""
  ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(to_unit_range).prefetch(AUTOTUNE)
  return ds.with_options(deterministic_options()).as_numpy_iterator()


def to_unit_range(batch: dict) -> dict:
  """Scales a batch's 'image' (float32 (B, H, W, 3)) from [0, 255] to [-1, 1] (x / 127.5 - 1),
  once per batch; other entries unchanged."""
  return dict(batch, image=batch['image'] / 127.5 - 1.0)


def deterministic_options() -> tf.data.Options:
  """tf.data options that keep element order deterministic; one intra-op thread per op (the
  parallelism comes from the parallel maps)."""
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  return options
