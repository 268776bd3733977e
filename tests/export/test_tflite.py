"""Export to SavedModel / TFLite (float32, int8) and the TFLite benchmark, on the embedded digits.

One export (Small, 10 classes, 32x32) is shared by the tests of this file. Its weights are trained
here for a few seconds on the digits' train split (~85-93% top-1 on the 300 test digits), so that
its predictions vary with the input and an int8 model can be held to the float one's predictions
(random weights give near-constant or input-insensitive logits that any broken export matches).
That export is the rerun of one whose int8 conversion failed (TF's converter patched to raise),
which must have left nothing behind.
"""
import contextlib
import json
import os
import re
import time

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
from tests import support

SIZE = 32
# LLVM's -O0 halves XLA's CPU compile time, most of these tests' Flax time; the HLO is the same.
O0 = {'xla_backend_optimization_level': 0}
TRAIN_STEPS = 60


def flax_logits(model, variables, x):
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=O0)
  return np.asarray(apply(variables, x))


@pytest.fixture(scope='module')
def data_config(tmp_path_factory):
  config = demo.demo_config().data
  config.data_dir = str(tmp_path_factory.mktemp('data'))
  return config


@pytest.fixture(scope='module')
def held_out(data_config):
  return support.split_arrays(data_config, data_config.eval_split)


@pytest.fixture(scope='module')
def model_and_variables(data_config):
  """Small trained for TRAIN_STEPS Adam steps (~6 s compile + a few s here) on the train split."""
  model = model_lib.MobileNetV3(variant='small', num_classes=10, depthwise_impl='conv')
  train_model = model.clone(bn_momentum=0.9, dropout_rate=0.0)
  variables = jax.jit(lambda rng: model_lib.init_variables(model, rng, (SIZE, SIZE)),
                      compiler_options=O0)(jax.random.key(0))
  images, labels = support.split_arrays(data_config, 'train')
  tx = optax.adam(3e-3)

  def step(params, stats, opt_state, x, y):
    def loss_fn(p):
      logits, updates = train_model.apply({'params': p, 'batch_stats': stats}, x, train=True,
                                          mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates
    grads, updates = jax.grad(loss_fn, has_aux=True)(params)
    updates_p, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates_p), updates['batch_stats'], opt_state

  step = jax.jit(step, compiler_options=O0)
  params, stats = variables['params'], variables['batch_stats']
  opt_state = tx.init(params)
  rng = np.random.default_rng(0)
  for _ in range(TRAIN_STEPS):
    idx = rng.choice(len(images), 64, replace=False)
    params, stats, opt_state = step(params, stats, opt_state, images[idx], labels[idx])
  return model, jax.tree.map(np.asarray, {'params': params, 'batch_stats': stats})


@contextlib.contextmanager
def failing_int8_conversion():
  """A context in which TFLite's int8 conversions (those given a representative dataset) raise
  after reading their first calibration batch, and float32 ones convert as usual."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from_saved_model = tf.lite.TFLiteConverter.from_saved_model

  def failing_converter(*args, **kwargs):
    converter = from_saved_model(*args, **kwargs)
    convert = converter.convert

    def convert_or_fail():
      if converter.representative_dataset is None:
        return convert()
      next(iter(converter.representative_dataset()))
      raise RuntimeError('int8 conversion failed (injected)')
    converter.convert = convert_or_fail
    return converter
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tf.lite.TFLiteConverter, 'from_saved_model', failing_converter)
    yield


@pytest.fixture(scope='module')
def exported(tmp_path_factory, model_and_variables, data_config):
  """The shared export, made by rerunning an export whose int8 conversion failed.

  Returns (out, export.json's content, what the failed export left in out's parent folder).
  """
  parent = tmp_path_factory.mktemp('export')
  out = str(parent / 'out')
  args = dict(image_size=SIZE, data_config=data_config, int8=True, calibration_images=16,
              source='test')
  with failing_int8_conversion(), pytest.raises(RuntimeError, match='injected'):
    tflite.export(*model_and_variables, out, **args)
  left = sorted(os.listdir(parent))
  info = tflite.export(*model_and_variables, out, **args)
  return out, info, left


def test_failed_export_leaves_nothing_and_its_rerun_succeeds(exported):
  out, info, left = exported
  assert left == []   # no half-written out, no out.tmp-<pid>
  assert sorted(os.listdir(os.path.dirname(out))) == ['out']
  assert sorted(os.listdir(out)) == sorted([tflite.SAVED_MODEL, tflite.FLOAT_FILE,
                                            tflite.INT8_FILE, tflite.INFO_FILE])
  assert info['bytes']['int8'] == os.path.getsize(os.path.join(out, tflite.INT8_FILE)) > 0


def test_float_tflite_matches_flax(exported, model_and_variables, data_config):
  out, info, _ = exported
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


@pytest.fixture(scope='module')
def held_out_predictions(exported, model_and_variables, held_out):
  """Top-1 class of every test digit by the Flax model and by each exported TFLite model."""
  images = held_out[0]
  return {'flax': flax_logits(*model_and_variables, images).argmax(-1),
          **{precision: benchmark.predict(os.path.join(exported[0], name), images).argmax(-1)
             for precision, name in (('float32', tflite.FLOAT_FILE), ('int8', tflite.INT8_FILE))}}


def test_int8_model_is_quantized_and_agrees_with_float(exported, held_out, held_out_predictions):
  out, info, _ = exported
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

  # The int8 model predicts what the float one does, on the 300 held-out test digits.
  # Measured (2026-12-01, 40-100 training steps; 60 here): float top-1 0.87-0.93 (0.923 at 60),
  # its most frequent class 35/300, int8 agreeing with float on 98.7-99.7% (int8 top-1 within 0.01
  # of float). Calibrating on images x 0.01 (clipped int8 ranges) gives 10% agreement. An untrained
  # (random-weight) export agrees on only 38% and predicts one class for 53% of the images.
  # The bounds leave 3-10x the measured slack.
  labels = held_out[1]
  float32, int8 = held_out_predictions['float32'], held_out_predictions['int8']
  assert np.bincount(float32, minlength=10).max() <= 0.3 * len(labels)   # not a constant model
  assert np.mean(float32 == labels) >= 0.7
  assert np.mean(int8 == float32) >= 0.9
  assert np.mean(int8 == labels) >= np.mean(float32 == labels) - 0.05


def test_benchmark_reports_both_models(exported, held_out, held_out_predictions):
  labels = held_out[1]
  results = benchmark.benchmark(exported[0], runs=30)
  assert set(results) == {'float32', 'int8'}
  for precision, r in results.items():
    path = os.path.join(exported[0], exported[1]['files'][precision])
    assert r['bytes'] == os.path.getsize(path)
    # top-1 over the whole eval split (its own batches of 50, this file's of 100):
    # equal to the top-1 of this test's predictions of the same file, and for float32 to Flax's
    # top-1 (the float export agrees with Flax on every test digit, measured).
    assert r['count'] == len(labels) == 300
    own_top1 = np.mean(held_out_predictions[precision] == labels)
    assert r['top1'] == pytest.approx(own_top1, abs=1e-9)
    # Latency of a 32x32 Small at batch 1 on one thread: measured 0.15-0.25 ms (the box may be
    # 5x slower when shared). The bounds catch a wrong unit (s or us) or timing something else:
    # the median must be within 10x of this test's own timing of invoke() on the same file.
    assert 0.01 < r['median_ms'] <= r['p90_ms'] < 50, r
    interp = benchmark.interpreter(path, threads=1)
    times = []
    for _ in range(40):
      start = time.perf_counter()
      interp.invoke()
      times.append((time.perf_counter() - start) * 1e3)
    own = float(np.median(times[10:]))
    assert own / 10 < r['median_ms'] < own * 10, (r, own)
  flax_top1 = np.mean(held_out_predictions['flax'] == labels)
  assert abs(results['float32']['top1'] - flax_top1) <= 1 / 300


def test_export_checks_its_inputs(tmp_path, exported, model_and_variables, data_config):
  model, variables = model_and_variables
  with pytest.raises(ValueError, match='int8 export needs a data config'):
    tflite.export(model, variables, str(tmp_path / 'a'), image_size=SIZE, int8=True)
  with pytest.raises(ValueError, match='exists and is not empty'):
    tflite.export(model, variables, exported[0], image_size=SIZE)
  with pytest.raises(ValueError, match=r'do not fit the model .*logits/kernel: weights '
                     r'\(1024, 10\), model \(1024, 5\)'):
    tflite.export(model.clone(num_classes=5), variables, str(tmp_path / 'b'), image_size=SIZE)
  with pytest.raises(ValueError, match='calibration_images=0 must be >= batch_size=1'):
    tflite.export(model, variables, str(tmp_path / 'c'), image_size=SIZE, int8=True,
                  data_config=data_config, calibration_images=0)
  (tmp_path / 'afile').write_text('')
  with pytest.raises(ValueError, match='is a file, not a directory'):
    tflite.export(model, variables, str(tmp_path / 'afile'), image_size=SIZE)
  assert os.listdir(tmp_path) == ['afile']


def test_export_fails_when_its_float_check_is_not_finite(tmp_path, model_and_variables):
  """Finite weights whose logits overflow: float32's max is 3.4e38, so 1e38 classifier weights
  times ~1024 penultimate activations give +-inf, and inf - inf = NaN in the float check."""
  model, variables = model_and_variables
  variables = jax.tree.map(np.copy, variables)
  variables['params']['logits']['kernel'][:] = 1e38
  out = tmp_path / 'out'
  with pytest.raises(ValueError, match=re.escape(
      f"Export of test failed its float32 check: {tflite.FLOAT_FILE}'s logits differ from "
      f"Flax's by nan (max relative; allowed: finite and <= 0.0001). Flax's own logits are not "
      "finite: the weights overflow, or a BatchNorm variance is negative. Nothing exported.")):
    tflite.export(model, variables, str(out), image_size=SIZE, source='test')
  assert os.listdir(tmp_path) == []


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
  pretrained.init_variables(workdir, model)
  with pytest.raises(ValueError, match='neither a variables checkpoint'):
    pretrained.load(str(tmp_path))
