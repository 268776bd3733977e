"""One measurement in a fresh process: `python benchmarks/workers.py FRAMEWORK MODE VARIANT BATCH STEPS`.

FRAMEWORK: mnv3_jax | keras_tf | torch_eager | torch_compile | onnxruntime | tflite.
MODE: train (forward + backward + RMSProp update) or infer. VARIANT: small | large. Images are
224x224x3 float32 in [-1, 1]; models have 1000 classes and random weights. Prints one JSON line:
{"ok": true, "ms": median step ms, "img_s", "compile_s": first call (trace + compile) in s,
"version"} or {"ok": false, "skip": why} when the framework is not installed.
"""
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 224
WARMUP = 3


def _timed(step, steps):
  """(compile_s, [step seconds]) of `step()` (which blocks until its result is ready)."""
  t = time.perf_counter()
  step()
  compile_s = time.perf_counter() - t
  for _ in range(WARMUP - 1):
    step()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return compile_s, times


def run_mnv3_jax(mode, variant, batch, steps):
  sys.path.insert(0, ROOT)
  import functools  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  from mnv3_jax.ops import depthwise
  from mnv3_jax import model
  from mnv3_jax.model import fused
  from mnv3_jax.train import optim
  from mnv3_jax.train import steps as steps_lib
  m = model.MobileNetV3(variant=variant)
  x = jax.random.uniform(jax.random.key(1), (batch, SIZE, SIZE, 3), minval=-1, maxval=1)
  if mode == 'infer':
    variables = model.init_variables(m, jax.random.key(0), (SIZE, SIZE))
    f = jax.jit(fused.inference_fn(m))   # the fused CPU kernels, as evaluation runs
    step = lambda: f(variables, x).block_until_ready()
  else:
    schedule = optim.learning_rate_schedule(
        base_learning_rate=0.01, base_batch_size=4096, batch_size=batch, steps_per_epoch=1000,
        warmup_epochs=5, warmup_init_fraction=0.1, decay_rate=0.99, decay_epochs=3)
    tx = optim.create_optimizer(learning_rate=schedule, rmsprop_decay=0.9, momentum=0.9,
                                epsilon=0.002, weight_decay=1e-5)
    # Built under jit: the EMA copies must not share buffers with the (donated) weights.
    init = jax.jit(functools.partial(steps_lib.create_train_state, m, tx,
                                     image_size=(SIZE, SIZE)))
    state = [init(jax.random.key(0))]
    data = {'image': x, 'label': jnp.arange(batch, dtype=jnp.int32) % 1000}
    f = jax.jit(functools.partial(steps_lib.train_step, model=m, tx=tx, schedule=schedule,
                                  label_smoothing=0.1, ema_decay=0.9999, seed=0),
                donate_argnums=0)
    def step():
      state[0], metrics = f(state[0], data)
      jax.block_until_ready(metrics)
  compile_s, times = _timed(step, steps)
  impl = depthwise.resolve_impl('auto')
  return compile_s, times, f'jax {jax.__version__}, depthwise {impl}'


def run_keras_tf(mode, variant, batch, steps):
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ['KERAS_BACKEND'] = 'tensorflow'
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  import keras
  build = keras.applications.MobileNetV3Small if variant == 'small' else (
      keras.applications.MobileNetV3Large)
  m = build(input_shape=(SIZE, SIZE, 3), weights=None, include_preprocessing=False,
            classifier_activation=None)
  x = tf.constant(np.random.uniform(-1, 1, (batch, SIZE, SIZE, 3)).astype('float32'))
  y = tf.constant(np.arange(batch) % 1000)
  if mode == 'infer':
    f = tf.function(lambda x: m(x, training=False))
    step = lambda: f(x).numpy()
  else:
    opt = keras.optimizers.RMSprop(learning_rate=0.01, rho=0.9, momentum=0.9, epsilon=0.002)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    @tf.function
    def train(x, y):
      with tf.GradientTape() as tape:
        loss = loss_fn(y, m(x, training=True))
      opt.apply_gradients(zip(tape.gradient(loss, m.trainable_variables), m.trainable_variables))
      return loss
    step = lambda: train(x, y).numpy()
  compile_s, times = _timed(step, steps)
  return compile_s, times, f'tensorflow {tf.__version__}, keras {keras.__version__}'


def _torchvision_model(variant):
  import torch  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, ROOT)
  from tests.interop import torch_models  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(os.cpu_count())
  return torch_models.torchvision_model(variant)


def run_torch(mode, variant, batch, steps, compiled=False):
  import torch  # pylint: disable=import-outside-toplevel
  m = _torchvision_model(variant)
  x = torch.rand(batch, 3, SIZE, SIZE) * 2 - 1
  if mode == 'infer':
    m.eval()
    f = torch.compile(m) if compiled else m
    def step():
      with torch.inference_mode():
        f(x)
  else:
    m.train()
    f = torch.compile(m) if compiled else m
    y = torch.arange(batch) % 1000
    opt = torch.optim.RMSprop(m.parameters(), lr=0.01, alpha=0.9, eps=0.0316, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    def step():
      opt.zero_grad(set_to_none=True)
      loss_fn(f(x), y).backward()
      opt.step()
  compile_s, times = _timed(step, steps)
  return compile_s, times, f'torch {torch.__version__}'


def run_onnxruntime(mode, variant, batch, steps):
  if mode != 'infer':
    raise ImportError('onnxruntime is measured for inference only')
  import tempfile  # pylint: disable=import-outside-toplevel
  import numpy as np
  import onnxruntime as ort
  import torch
  m = _torchvision_model(variant).eval()
  x = np.random.uniform(-1, 1, (batch, 3, SIZE, SIZE)).astype('float32')
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'model.onnx')
    torch.onnx.export(m, (torch.from_numpy(x),), path, input_names=['x'], dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
  step = lambda: session.run(None, {'x': x})
  compile_s, times = _timed(step, steps)
  return compile_s, times, f'onnxruntime {ort.__version__} (torch.onnx export)'


def run_tflite(mode, variant, batch, steps):
  if mode != 'infer':
    raise ImportError('TFLite is measured for inference only')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  import keras
  build = keras.applications.MobileNetV3Small if variant == 'small' else (
      keras.applications.MobileNetV3Large)
  m = build(input_shape=(SIZE, SIZE, 3), weights=None, include_preprocessing=False,
            classifier_activation=None)
  f = tf.function(lambda x: m(x, training=False)).get_concrete_function(
      tf.TensorSpec((batch, SIZE, SIZE, 3), tf.float32))
  flat = tf.lite.TFLiteConverter.from_concrete_functions([f], m).convert()
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  except ImportError:
    Interpreter = tf.lite.Interpreter
  interp = Interpreter(model_content=flat, num_threads=os.cpu_count())
  interp.allocate_tensors()
  x = np.random.uniform(-1, 1, (batch, SIZE, SIZE, 3)).astype('float32')
  index = interp.get_input_details()[0]['index']
  def step():
    interp.set_tensor(index, x)
    interp.invoke()
  compile_s, times = _timed(step, steps)
  return compile_s, times, f'TFLite ({Interpreter.__module__}), tensorflow {tf.__version__}'


RUNNERS = {
    'mnv3_jax': run_mnv3_jax,
    'keras_tf': run_keras_tf,
    'torch_eager': run_torch,
    'torch_compile': lambda *a: run_torch(*a, compiled=True),
    'onnxruntime': run_onnxruntime,
    'tflite': run_tflite,
}


def main(argv):
  framework, mode, variant, batch, steps = argv[1], argv[2], argv[3], int(argv[4]), int(argv[5])
  try:
    compile_s, times, version = RUNNERS[framework](mode, variant, batch, steps)
  except ImportError as e:
    print(json.dumps({'ok': False, 'skip': f'{type(e).__name__}: {e}'}))
    return
  ms = 1e3 * statistics.median(times)
  print(json.dumps({'ok': True, 'ms': ms, 'img_s': batch * 1e3 / ms, 'compile_s': compile_s,
                    'version': version}))


if __name__ == '__main__':
  main(sys.argv)
