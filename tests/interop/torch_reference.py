"""Reference PyTorch MobileNetV3s (torchvision, timm; built by tests.interop.torch_models) with random
weights and BN statistics, and their float64 logits.
"""
import copy

import numpy as np
import torch

from mnv3_jax import model as model_lib

# The references are tiny (batch 2, 64x96): on a shared 2-core CPU, torch's two OpenMP threads
# spin-wait for each other whenever another process holds a core, which made single forward
# passes take 20-60 s instead of 0.3 s.
torch.set_num_threads(1)


def randomize(module: torch.nn.Module, seed: int, image_size=(64, 64),
              input_fn=lambda x: x) -> torch.nn.Module:
  """Random weights and BN statistics close to those of real activations; returns it in eval mode.

  Statistics drawn independently of the activations would let the input-dependent part of the
  activations shrink to nothing by the logits (see tests/interop/test_keras_weights.py); so one training-mode
  pass with momentum 1 sets them to a batch's statistics, which are then perturbed. input_fn maps
  NCHW images in [-1, 1] to what the model is fed (e.g. ImageNet mean/std normalization).
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if p.ndim > 1:
        fan_in = p[0].numel()
        p.copy_(torch.randn(p.shape, generator=gen) * np.sqrt(2 / fan_in))
      elif name.endswith('bias'):
        p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
      else:   # BN scale
        p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
      bn.momentum = 1.0
    module.train()
    module(input_fn(torch.rand((4, 3, *image_size), generator=gen) * 2 - 1))
    for bn in bns:
      bn.momentum = 0.1
      std = bn.running_var.sqrt()
      bn.running_mean.add_(torch.randn(std.shape, generator=gen) * 0.1 * std)
      bn.running_var.mul_(torch.rand(std.shape, generator=gen) * 0.7 + 0.7)
  return module.eval()


def imagenet_normalized(x):
  """[-1, 1] images (numpy NHWC or torch NCHW) as torchvision's models are fed them."""
  nchw = isinstance(x, torch.Tensor)
  shape = (1, 3, 1, 1) if nchw else (1, 1, 1, 3)
  mean, std = (np.reshape(v, shape).astype(np.float32)
               for v in (model_lib.IMAGENET_MEAN, model_lib.IMAGENET_STD))
  if nchw:
    mean, std = torch.from_numpy(mean), torch.from_numpy(std)
  return ((x + 1) / 2 - mean) / std


def logits(module: torch.nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
  """float64 logits of NHWC images (the layout of the Flax model), computed in float64.

  A float32 reference is itself ~1e-5 (relative) off on Large with random weights, as much as
  the float32 model under test: float64 makes the reference exact for the comparison.
  """
  exact = copy.deepcopy(module).double()
  with torch.no_grad():
    return exact(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).astype(np.float64))).numpy()
