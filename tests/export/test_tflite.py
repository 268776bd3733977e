"""Export to SavedModel / TFLite (float32, int8) and the TFLite benchmark, on the embedded digits.

One export (Small, 10 classes, 32x32, random weights with random BN statistics) is shared by the
tests of this file: conversion and int8 calibration take most of its time.
"""
import json
import os

import jax
import numpy as np
import optax
import pytest

from configs import demo
from mnv3_jax.export import benchmark
from mnv3_jax.train import checkpointing
from mnv3_jax.export import tflite
from mnv3_jax.data import input_pipeline
from mnv3_jax.interop import pretrained
from mnv3_jax.train import steps
from mnv3_jax import model as model_lib

SIZE = 32
# LLVM's -O0 halves XLA's CPU compile time, most of these tests' Flax time; the HLO is the same.
O0 = {'xla_backend_optimization_level': 0}


def _realistic_bn_stats(model, variables, seed):
  """BN statistics of a batch of random images, perturbed: with init's (mean 0, variance 1) the
  logits hardly depend on the input, and a parity test would see only the biases."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, (8, SIZE, SIZE, 3)).astype(np.float32)
  stats_model = model.clone(bn_momentum=0.0, dropout_rate=0.0)
  _, updates = jax.jit(lambda v, x: stats_model.apply(v, x, train=True, mutable=['batch_stats']),
                       compiler_options=O0)(variables, x)
  stats = jax.tree_util.tree_map_with_path(
      lambda path, v: np.asarray(v) * (rng.uniform(0.7, 1.4, v.shape) if path[-1].key == 'var'
                                       else 1 + rng.normal(0, 0.1, v.shape)),
      updates['batch_stats'])
  return {'params': variables['params'], 'batch_stats': jax.tree.map(np.float32, stats)}


def flax_logits(model, variables, x):
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=O0)
  return np.asarray(apply(variables, x))


@pytest.fixture(scope='module')
def data_config(tmp_path_factory):
  config = demo.demo_config().data
  config.data_dir = str(tmp_path_factory.mktemp('data'))
  return config


@pytest.fixture(scope='module')
def model_and_variables():
  model = model_lib.MobileNetV3(variant='small', num_classes=10, depthwise_impl='conv')
  variables = jax.jit(lambda rng: model_lib.init_variables(model, rng, (SIZE, SIZE)),
                      compiler_options=O0)(jax.random.key(0))
  return model, _realistic_bn_stats(model, variables, seed=1)


@pytest.fixture(scope='module')
def exported(tmp_path_factory, model_and_variables, data_config):
  out = str(tmp_path_factory.mktemp('export') / 'out')
  info = tflite.export(*model_and_variables, out, image_size=SIZE, data_config=data_config,
                       int8=True, calibration_images=16, source='test')
  return out, info


def test_float_tflite_matches_flax(exported, model_and_variables, data_config):
  out, info = exported
  model, variables = model_and_variables
  digits = next(input_pipeline.eval_iterator(data_config, global_batch_size=8, process_index=0,
                                             process_count=1))['image']
  noise = np.random.default_rng(5).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
  for x in (digits, noise):
    ref = flax_logits(model, variables, x)
    got = benchmark.predict(os.path.join(out, tflite.FLOAT_FILE), x)
    assert got.shape == ref.shape == (len(x), 10)
    assert np.abs(ref[0] - ref[1]).max() > 0.1 * np.abs(ref).max()
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-4
  assert info['float32_max_rel_diff_vs_flax'] <= 1e-4


def test_int8_model_is_quantized_and_runs(exported, model_and_variables):
  out, info = exported
  path = os.path.join(out, tflite.INT8_FILE)
  interp = benchmark.interpreter(path)
  details = interp.get_tensor_details()
  # Weights and activations are int8 inside; the interface stays float32 in [-1, 1].
  assert sum(d['dtype'] == np.int8 for d in details) > len(details) // 2
  assert interp.get_input_details()[0]['dtype'] == np.float32
  x = np.random.default_rng(6).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
  logits = benchmark.predict(interp, x)
  assert logits.shape == (3, 10) and np.isfinite(logits).all()
  assert info['bytes']['int8'] < 0.5 * info['bytes']['float32']
  with open(os.path.join(out, tflite.INFO_FILE)) as f:
    assert json.load(f)['files'] == {'float32': tflite.FLOAT_FILE, 'int8': tflite.INT8_FILE}
  assert os.path.isfile(os.path.join(out, tflite.SAVED_MODEL, 'saved_model.pb'))


def test_benchmark_reports_both_models(exported):
  results = benchmark.benchmark(exported[0], runs=2)
  assert set(results) == {'float32', 'int8'}
  for r in results.values():
    assert r['count'] == 300 and 0 <= r['top1'] <= 1 and r['median_ms'] > 0


def test_export_checks_its_inputs(tmp_path, exported, model_and_variables):
  model, variables = model_and_variables
  with pytest.raises(ValueError, match='int8 export needs a data config'):
    tflite.export(model, variables, str(tmp_path / 'a'), image_size=SIZE, int8=True)
  with pytest.raises(ValueError, match='exists and is not empty'):
    tflite.export(model, variables, exported[0], image_size=SIZE)
  with pytest.raises(ValueError, match=r'do not fit the model .*logits/kernel: weights '
                     r'\(1024, 10\), model \(1024, 5\)'):
    tflite.export(model.clone(num_classes=5), variables, str(tmp_path / 'b'), image_size=SIZE)


def test_training_workdir_loads_best_ema_weights(tmp_path, data_config):
  """A workdir as the trainer leaves it: config.json, checkpoints/ and best/ with metrics."""
  config = demo.demo_config()
  config.data = data_config
  config.model.width = 0.35
  model = model_lib.MobileNetV3(**{**config.model.to_dict(), 'dtype': 'float32',
                                   'depthwise_impl': 'conv'})
  # A state of the right tree and shapes, with distinct random raw and EMA weights (no compile).
  rng = np.random.default_rng(0)
  state = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), jax.eval_shape(
      lambda key: steps.create_train_state(model, optax.sgd(0.1), key, (SIZE, SIZE)),
      jax.random.key(0)))
  workdir = str(tmp_path / 'run')
  checkpointing.save_config(workdir, config)
  ckpt = checkpointing.Checkpointer(workdir, save_every_steps=1, keep_best=1)
  ckpt.save(2, state, force=True)
  ckpt.save_best(2, state, {'ema_top1': 0.5})
  ckpt.close()
  for path in (workdir, os.path.join(workdir, 'checkpoints', '2')):
    for weights, params in (('ema', state.ema_params), ('raw', state.params)):
      variables, options, data = pretrained.load(path, weights)
      jax.tree.map(np.testing.assert_array_equal, variables['params'], params)
      assert options['width'] == 0.35 and data['dataset'] == 'digits'
  pretrained.check_init_from(workdir, model)
  with pytest.raises(ValueError, match='neither a variables checkpoint'):
    pretrained.load(str(tmp_path))
