"""torchvision / timm -> Flax conversion: logits parity with the reference models, files, errors.

Reference models are torchvision's and timm's own code with random weights and random BN
statistics (tests/interop/torch_reference.py); they are saved to .pth or .safetensors files and converted
from there. Images are 64x96: even at every stride-2 layer, where TF SAME padding (tf_ ports)
and symmetric padding (torchvision, native timm) differ.
"""
import functools
import pickle
import re

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.interop import torch_reference
from mnv3_jax.interop import torch_weights
from mnv3_jax.interop import import_weights
from mnv3_jax.interop import pretrained
from tests.interop import torch_models
from mnv3_jax import model as model_lib

SIZE = (64, 96)
TOLERANCE = 1e-5
# name: (format, reference, Flax options); the reference is a torchvision variant or a timm name.
CASES = {
    'torchvision_small': ('torchvision', 'small', dict(variant='small', num_classes=10)),
    'torchvision_large': ('torchvision', 'large', dict(variant='large', num_classes=1000)),
    'timm_small': ('timm', 'mobilenetv3_small_100', dict(variant='small', num_classes=7)),
    'timm_tf_large_075': ('timm_tf', 'tf_mobilenetv3_large_075',
                          dict(variant='large', width=0.75, num_classes=12)),
    'timm_tf_small_minimal': ('timm_tf', 'tf_mobilenetv3_small_minimal_100',
                              dict(variant='small', minimalistic=True, num_classes=5)),
}


def input_norm(name):
  """The format's input normalization, except for Large: its random weights amplify float32
  rounding of the wider ImageNet-normalized inputs to ~1.3e-5; the Small cases test the option."""
  fmt, ref, _ = CASES[name]
  return 'none' if ref == 'large' else import_weights.DEFAULT_INPUT_NORM[fmt]


@functools.lru_cache(maxsize=None)
def reference(name):
  fmt, ref, options = CASES[name]
  build = torch_models.torchvision_model if fmt == 'torchvision' else torch_models.timm_model
  # Weights trained on ImageNet mean/std inputs: the Flax model normalizes [-1, 1] images itself.
  feed = torch_reference.imagenet_normalized if input_norm(name) == 'imagenet' else lambda x: x
  return torch_reference.randomize(build(ref, options['num_classes']), seed=len(name),
                                   input_fn=feed)


def flax_model(name, **overrides):
  fmt, _, options = CASES[name]
  return model_lib.MobileNetV3(**{**options, **torch_weights.required_options(fmt), **overrides})


def save(module, path):
  if str(path).endswith('.safetensors'):
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
  else:
    torch.save(module.state_dict(), path)
  return path


def images(seed):
  return np.random.default_rng(seed).uniform(-1, 1, (2, *SIZE, 3)).astype(np.float32)


def flax_logits(model, variables, x):
  # LLVM's -O0 halves XLA's CPU compile time; the arithmetic is the same HLO.
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False),
                  compiler_options={'xla_backend_optimization_level': 0})
  return np.asarray(apply(variables, x))


@pytest.mark.parametrize('name', list(CASES))
def test_logits_match_reference(name, tmp_path):
  fmt = CASES[name][0]
  path = save(reference(name), tmp_path / ('w.pth' if fmt == 'torchvision' else 'w.safetensors'))
  # One case also runs the 'shifted' depthwise (slower to compile): symmetric padding's path there.
  norm = input_norm(name)
  model = flax_model(name, depthwise_impl='shifted' if name == 'torchvision_large' else 'conv',
                     input_norm=norm)
  x = images(seed=3)
  ref = torch_reference.logits(
      reference(name), torch_reference.imagenet_normalized(x) if norm == 'imagenet' else x)
  out = flax_logits(model, torch_weights.from_torch(path, model, fmt), x)
  assert out.shape == ref.shape == (2, model.num_classes)
  scale = np.abs(ref).max()
  # The two images' logits differ: the comparison sees the input's path through every layer.
  assert np.abs(ref[0] - ref[1]).max() > 0.1 * scale
  assert np.abs(out - ref).max() / scale <= TOLERANCE


def test_padding_matters_at_these_sizes():
  """The tf_ port with symmetric padding is far off: the parity tests can tell the two apart."""
  model = flax_model('timm_tf_small_minimal')
  variables = torch_weights.from_torch(reference('timm_tf_small_minimal').state_dict(), model,
                                       'timm_tf')
  x = images(seed=3)
  ref = torch_reference.logits(reference('timm_tf_small_minimal'), x)
  wrong = flax_logits(model.clone(padding='symmetric'), variables, x)
  assert np.abs(wrong - ref).max() / np.abs(ref).max() > 100 * TOLERANCE


def test_variables_have_init_tree_and_reference_values():
  model = flax_model('torchvision_small')
  variables = torch_weights.from_torch(reference('torchvision_small').state_dict(), model,
                                       'torchvision')
  init = jax.eval_shape(lambda rng: model_lib.init_variables(model, rng), jax.random.key(0))
  assert jax.tree.structure(variables) == jax.tree.structure(init)
  state = reference('torchvision_small').state_dict()
  depthwise = state['features.4.block.1.0.weight'].numpy()   # (96, 1, 5, 5)
  np.testing.assert_array_equal(variables['params']['block_3']['depthwise']['conv']['kernel'],
                                depthwise.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables['params']['block_0']['se']['reduce']['kernel'],
                                state['features.1.block.1.fc1.weight'].numpy()[:, :, 0, 0].T)
  np.testing.assert_array_equal(variables['batch_stats']['head_conv']['bn']['var'],
                                state['features.12.1.running_var'].numpy())


def test_small_weights_into_large_model_fail():
  with pytest.raises(ValueError, match=r'checkpoint \(11 bnecks .*, 10 classes\) does not fit .*'
                     r"variant='large'") as error:
    torch_weights.from_torch(reference('torchvision_small').state_dict(),
                             flax_model('torchvision_small', variant='large'), 'torchvision')
  assert 'Flax leaves without a torchvision weight: ' in str(error.value)


def test_other_class_count_fails_naming_shapes():
  with pytest.raises(ValueError, match=re.escape(
      'classifier.weight (7, 1024) -> params/logits/kernel has shape (1024, 7) but the Flax model '
      'expects (1024, 10)')):
    torch_weights.from_torch(reference('timm_small').state_dict(),
                             flax_model('timm_small', num_classes=10), 'timm')


def test_other_width_fails():
  with pytest.raises(ValueError,
                     match=r'(?s)\(15 bnecks .*, 12 classes\) .*shape mismatches: timm_tf blocks'):
    torch_weights.from_torch(reference('timm_tf_large_075').state_dict(),
                             flax_model('timm_tf_large_075', width=1.0), 'timm_tf')
  with pytest.raises(ValueError, match=r'width=0.75 \(torchvision weights: only 1.0'):
    torch_weights.from_torch(reference('torchvision_small').state_dict(),
                             flax_model('torchvision_small', width=0.75), 'torchvision')


def test_options_the_weights_do_not_show_are_checked():
  with pytest.raises(ValueError, match=r"padding='same' \(needs 'symmetric'\); bn_epsilon=0.001 "
                     r"\(needs 1e-05\)"):
    torch_weights.from_torch({}, flax_model('timm_small', padding='same', bn_epsilon=1e-3), 'timm')
  with pytest.raises(ValueError, match="Unknown weights format 'onnx'"):
    torch_weights.from_torch({}, flax_model('timm_small'), 'onnx')


class _Payload:
  """Unpickling this creates the file `path`: a stand-in for arbitrary code in a pickle."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return open, (self.path, 'w')


@pytest.mark.parametrize('writer', ['pickle', 'torch.save'])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, writer):
  marker, path = tmp_path / 'pwned', tmp_path / 'evil.pth'
  payload = {'features.0.0.weight': _Payload(str(marker))}
  if writer == 'pickle':
    with open(path, 'wb') as f:
      pickle.dump(payload, f, protocol=2)
  else:
    torch.save(payload, path)
  with pytest.raises(ValueError, match='Refused .*evil.pth.*not a plain weights file'):
    torch_weights.load_state_dict(path)
  assert not marker.exists()


def test_wrapped_checkpoints_and_bad_files(tmp_path):
  state = reference('torchvision_small').state_dict()
  path = tmp_path / 'ckpt.pth'
  torch.save({'epoch': 3, 'model': {f'module.{k}': v for k, v in state.items()},
              'state_dict_ema': state}, path)
  for key in (None, 'state_dict_ema'):
    loaded = torch_weights.load_state_dict(path, key)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
  torch.save({'epoch': 3}, tmp_path / 'bare.pth')
  with pytest.raises(ValueError, match="not a state dict and has none of the entries"):
    torch_weights.load_state_dict(tmp_path / 'bare.pth')
  with pytest.raises(ValueError, match=r'allowed: \.safetensors, \.pth, \.pt, \.bin'):
    torch_weights.load_state_dict(tmp_path / 'w.onnx')
  with pytest.raises(FileNotFoundError, match='missing.safetensors'):
    torch_weights.load_state_dict(tmp_path / 'missing.safetensors')


def test_import_weights_writes_a_checkpoint_that_loads_back(tmp_path):
  path = save(reference('timm_small'), tmp_path / 'w.safetensors')
  out = tmp_path / 'imported'
  model = import_weights.import_weights(str(path), 'timm', str(out), variant='small',
                                        num_classes=7)
  assert model == flax_model('timm_small', input_norm='imagenet')
  variables, options, data = pretrained.load(out)
  assert options == pretrained.model_options(model) and data is None
  jax.tree.map(np.testing.assert_array_equal, variables,
               torch_weights.from_torch(path, model, 'timm'))
  pretrained.init_variables(out, model.clone(dropout_rate=0.3, depthwise_impl='conv'))
  with pytest.raises(ValueError, match=r"model.num_classes: weights 7, config 10; "
                     r"model.padding: weights 'symmetric', config 'same'.*"
                     r"--config.model.num_classes=7 --config.model.padding=symmetric"):
    pretrained.init_variables(out, model.clone(num_classes=10, padding='same'))
  with pytest.raises(ValueError, match='exists and is not empty'):
    import_weights.import_weights(str(path), 'timm', str(out), variant='small', num_classes=7)
