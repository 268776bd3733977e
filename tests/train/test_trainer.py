"""The train step, evaluation and the loop, on real data, devices and checkpoints."""
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mnv3_jax.data import input_pipeline
from mnv3_jax.parallel import sharding
from mnv3_jax.train import steps
from mnv3_jax.train import trainer
from mnv3_jax.model import MobileNetV3
from tests.support import random_batch, restore_params, steps_per_epoch, tiny_config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('data')


def test_one_step_on_8_devices_equals_1_device(data_dir):
  assert jax.device_count() == 8, 'tests/conftest.py must give 8 CPU devices'
  config = tiny_config(data_dir)
  model = MobileNetV3(**config.model)
  schedule, tx = trainer.build_optimizer(config, steps_per_epoch(config))
  batch = random_batch(16, 32, 10)
  results = []
  for devices in (jax.devices()[:8], jax.devices()[:1]):
    mesh = sharding.make_mesh(devices)
    init_fn, train_fn, _ = steps.jit_steps(model, tx, schedule, config, mesh)
    state = init_fn(jax.random.key(0))
    for _ in range(2):
      state, metrics = train_fn(state, sharding.to_global(batch, mesh))
    results.append((jax.device_get(state), metrics.compute()))
  (s8, m8), (s1, m1) = results
  deltas = jax.tree.leaves(jax.tree.map(lambda a, b: np.max(np.abs(a - b)), s8.params, s1.params))
  assert max(deltas) <= 1e-5
  assert int(s8.step) == int(s1.step) == 2
  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
  # The step changed the weights: equality is not vacuous.
  init = jax.device_get(init_fn(jax.random.key(0)))
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.max(np.abs(a - b)), s1.params, init.params))
  assert max(moved) > 1e-4


class FixedLogits(nn.Module):
  """Predicts class 0 for every image (logits independent of the input)."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False):
    return jnp.tile(jnp.arange(self.num_classes, 0, -1, dtype=jnp.float32), (x.shape[0], 1))


@pytest.mark.parametrize('examples', [37, 1])
@pytest.mark.parametrize('process_count', [1, 2, 3])
def test_eval_counts_every_example_once(data_dir, examples, process_count):
  config = tiny_config(data_dir)
  config.data.eval_split = f'test[:{examples}]'
  mesh = sharding.make_mesh(jax.devices()[:8])
  eval_fn = jax.jit(lambda b: steps.eval_step({}, b, model=FixedLogits()))
  total, counts, labels = None, [], []
  for index in range(process_count):
    batches = list(input_pipeline.eval_iterator(   # 48: 48, 24, 16 per process; 8 devices each
        config.data, global_batch_size=48, process_index=index,
        process_count=process_count))
    counts.append(len(batches))
    for batch in batches:
      labels.extend(batch['label'][batch['mask'].astype(bool)])
      m = eval_fn(sharding.to_global(batch, mesh))
      total = m if total is None else total.merge(m)
  assert len(set(counts)) == 1, f'processes disagree on eval batch count: {counts}'
  assert int(total.top1.count) == examples
  expected = np.mean(np.asarray(labels) == 0)
  np.testing.assert_allclose(float(total.compute()['top1']), expected, rtol=1e-6)


def test_resume_is_bit_identical(data_dir, tmp_path):
  straight = tiny_config(data_dir, num_train_steps=6)
  trainer.train_and_evaluate(straight, str(tmp_path / 'straight'))
  first = tiny_config(data_dir, num_train_steps=3)
  trainer.train_and_evaluate(first, str(tmp_path / 'resumed'))
  trainer.train_and_evaluate(straight, str(tmp_path / 'resumed'))
  a = restore_params(straight, tmp_path / 'straight')
  b = restore_params(straight, tmp_path / 'resumed')
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_resume_is_bit_identical_at_the_default_xla_optimization_level(data_dir, tmp_path):
  """The test above in a process without conftest.py's `xla_backend_optimization_level=0`: the
  suite compiles unoptimised code, training runs optimised code (other fusions, vectorised
  loops), and resumption must be bit-identical there too."""
  flags = ' '.join(f for f in os.environ.get('XLA_FLAGS', '').split()
                   if 'xla_backend_optimization_level' not in f)
  script = ('import os, sys; from pathlib import Path; '
            "assert 'optimization_level' not in os.environ['XLA_FLAGS']; "
            'from tests.train.test_trainer import test_resume_is_bit_identical as t; '
            't(Path(sys.argv[1]), Path(sys.argv[2])); print("bit-identical")')
  root = Path(__file__).resolve().parents[2]
  out = subprocess.run([sys.executable, '-c', script, str(data_dir), str(tmp_path)],
                       env=dict(os.environ, XLA_FLAGS=flags, PYTHONPATH=str(root),
                                TF_CPP_MIN_LOG_LEVEL='2'),
                       cwd=root, capture_output=True, text=True, timeout=900, check=False)
  assert out.returncode == 0 and 'bit-identical' in out.stdout, out.stderr[-5000:]


def test_end_to_end_on_imagenet_format_data(imagenet_dir, tmp_path):
  config = tiny_config(imagenet_dir, num_train_steps=2, **{
      'data.dataset': 'imagenet2012', 'data.eval_split': 'validation', 'data.random_flip': True,
      'model.num_classes': 1000})
  workdir = tmp_path / 'run'
  metrics = trainer.train_and_evaluate(config, str(workdir))
  assert metrics['eval_count'] == metrics['ema_count'] == 11
  assert all(np.isfinite(v) for v in metrics.values())
  assert list(workdir.glob('events.out.tfevents.*')), 'no TensorBoard event file'
  assert (workdir / 'checkpoints' / '2').is_dir()
  assert (workdir / 'config.json').is_file()


def test_missing_imagenet_fails_fast_with_instructions(tmp_path):
  config = tiny_config(tmp_path / 'empty', **{'data.dataset': 'imagenet2012',
                                              'model.num_classes': 1000})
  with pytest.raises(FileNotFoundError, match='manual') as error:
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert str(tmp_path / 'empty') in str(error.value)
  assert not (tmp_path / 'run' / 'checkpoints').exists()
