"""BatchNorm statistics per device (config.bn_stats='per_device') on conftest's 8 CPU devices."""
import jax
import numpy as np
import optax
import pytest

from mnv3_jax.parallel import sharding
from mnv3_jax.tasks import classification
from mnv3_jax.train import steps
from mnv3_jax.train import trainer
from mnv3_jax.train import preflight
from mnv3_jax.model import MobileNetV3
from tests.support import random_batch, tiny_config

STEPS_PER_EPOCH = 10   # any: only the learning-rate schedule depends on it
FAST_COMPILE = {'xla_backend_optimization_level': 0}   # ~2x faster to compile; one step to run


def max_diff(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def test_per_device_bn_step_equals_each_shard_on_its_own(tmp_path):
  config = tiny_config(tmp_path, bn_stats='per_device')
  mesh = sharding.make_mesh()
  n = mesh.devices.size
  assert n == 8, 'tests/conftest.py must give 8 CPU devices'
  model = MobileNetV3(**config.model)
  schedule, tx = trainer.build_optimizer(config, STEPS_PER_EPOCH)
  init_fn, train_fn, _ = steps.jit_steps(model, tx, schedule, config, mesh)
  batch = random_batch(config.batch_size, config.data.image_size, 10)
  state = init_fn(jax.random.key(0))
  initial = jax.device_get(state)
  batch_on_mesh = sharding.to_global(batch, mesh)
  train_fn = train_fn.lower(state, batch_on_mesh).compile(compiler_options=FAST_COMPILE)
  new_state, metrics = train_fn(state, batch_on_mesh)
  new_state = jax.device_get(new_state)

  def on_its_own(params, batch_stats, shard, dropout_rng):
    """One device's shard through the model alone: loss, its BN statistics, gradients."""
    def loss_fn(p):
      logits, updates = model.apply({'params': p, 'batch_stats': batch_stats}, shard['image'],
                                    train=True, mutable=['batch_stats'],
                                    rngs={'dropout': dropout_rng})
      loss = classification.cross_entropy(logits, shard['label'], config.label_smoothing).mean()
      return loss, updates['batch_stats']
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  step_rng = jax.random.fold_in(jax.random.key(config.seed), 0)   # train_step's, at step 0
  size = config.batch_size // n
  shard = lambda i: {k: v[i * size:(i + 1) * size] for k, v in batch.items()}
  on_its_own = jax.jit(on_its_own).lower(
      initial.params, initial.batch_stats, shard(0), step_rng).compile(
          compiler_options=FAST_COMPILE)
  shards = [jax.device_get(on_its_own(
      initial.params, initial.batch_stats, shard(i), jax.random.fold_in(step_rng, i)))
            for i in range(n)]
  mean = lambda *trees: jax.tree.map(lambda *xs: np.mean(xs, axis=0), *trees)
  losses = [loss for (loss, _), _ in shards]
  stats = mean(*[s for (_, s), _ in shards])
  grads = mean(*[g for _, g in shards])
  updates, _ = tx.update(grads, initial.opt_state, initial.params)
  params = optax.apply_updates(initial.params, updates)

  np.testing.assert_allclose(float(metrics.compute()['loss']), np.mean(losses), rtol=1e-5)
  assert max_diff(new_state.batch_stats, stats) <= 1e-5
  assert max_diff(new_state.params, params) <= 1e-5
  # The shards' batch means differ, so statistics of the whole batch would not be their mean.
  stem_means = [s['stem']['bn']['mean'] for (_, s), _ in shards]
  assert np.max(np.std(stem_means, axis=0)) > 1e-3


def test_bad_bn_stats_is_rejected_before_compiling(tmp_path):
  config = tiny_config(tmp_path, bn_stats='per_host')
  with pytest.raises(ValueError, match=r"bn_stats 'per_host'.*'global', 'per_device'"):
    preflight.check_config(config, str(tmp_path / 'run'), sharding.make_mesh())
