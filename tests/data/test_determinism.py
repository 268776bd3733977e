"""mnv3_jax/data/determinism.py: the training order and batch arithmetic the pipelines share."""
import numpy as np
import pytest
import tensorflow as tf

from mnv3_jax.data import determinism


def _examples(first, *, shard_sizes=(5, 5), process_index=0, seed=0, count=12):
  """(number of the shard's record, its example seed) for `count` examples from `first` on."""
  records = tf.data.Dataset.range(shard_sizes[process_index])
  ds = determinism.train_examples(
      records, lambda example_seed, record: (record, example_seed), shard_sizes=shard_sizes,
      process_index=process_index, split='train', seed=seed, first=first, shuffle_buffer=100,
      num_parallel_calls=2)
  return [(int(r), tuple(s)) for r, s in ds.take(count).as_numpy_iterator()]


def test_every_epoch_is_a_permutation_and_a_later_start_is_a_suffix():
  full = _examples(0, count=20)
  for e in range(4):
    assert sorted(r for r, _ in full[5 * e:5 * e + 5]) == list(range(5))
  assert [r for r, _ in full[:5]] != [r for r, _ in full[5:10]]   # reshuffled per epoch
  assert _examples(7) == full[7:19]
  assert len({s for _, s in full}) == 20   # a seed per record number, not per record
  assert _examples(0, process_index=1) != _examples(0)
  assert _examples(0, seed=1) != full[:12]


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match='has no examples'):
    _examples(0, shard_sizes=(3, 0), process_index=1)
  with pytest.raises(ValueError, match='start_step=-1'):
    determinism.first_record(-1, 8)
  with pytest.raises(ValueError, match='positive multiple'):
    determinism.local_batch_size(6, 0, 4)
  with pytest.raises(ValueError, match='process_index=4'):
    determinism.local_batch_size(8, 4, 4)
  assert determinism.local_batch_size(8, 3, 4) == 2 and determinism.first_record(3, 2) == 6


def test_eval_padding_and_numpy_batches():
  assert [determinism.eval_padding((5, 4, 0), p, 2) for p in range(3)] == [1, 2, 6]
  ds = tf.data.Dataset.from_tensor_slices({'image': np.array([0.0, 127.5, 255.0])})
  assert [b['image'].tolist() for b in determinism.numpy_batches(ds, 2)] == [[-1.0, 0.0], [1.0]]
  assert len(list(determinism.numpy_batches(ds, 2, drop_remainder=True))) == 1
