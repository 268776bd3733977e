"""LR-ASPP: PyTorch-exact bilinear resizing, the model's output, the 'paper' gate pooling, bad
options, and the param/MAC summary against torchvision's and the paper's counts.

Parity of the whole model with torchvision: tests/interop/test_torch_lraspp.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mnv3_jax.interop import torch_lraspp
from mnv3_jax.model.backbone import MobileNetV3Backbone
from mnv3_jax.tasks.segmentation import lraspp, summary

BACKBONE = MobileNetV3Backbone(variant='small', width=0.35, output_stride=16,
                               depthwise_impl='conv')


@pytest.mark.parametrize('size_in, size_out', [((12, 16), (96, 128)), ((5, 7), (13, 4)),
                                               ((9, 6), (3, 5)), ((1, 1), (4, 3))])
@pytest.mark.parametrize('align_corners', [False, True])
def test_resize_matches_torch_interpolate(size_in, size_out, align_corners):
  x = np.random.default_rng(0).normal(size=(2, *size_in, 3)).astype(np.float32)
  want = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=size_out, mode='bilinear',
                       align_corners=align_corners).numpy().transpose(0, 2, 3, 1)
  got = lraspp.resize_bilinear(jnp.asarray(x), size_out, align_corners)
  assert got.shape == (2, *size_out, 3)
  # torch computes source indices in float32 (ours: float64): ~1e-6 apart on unit values.
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_model_returns_float32_logits_at_the_input_size():
  model = lraspp.LRASPPMobileNetV3(BACKBONE, num_classes=6, inter_channels=16)
  x = jax.random.uniform(jax.random.key(0), (2, 65, 70, 3), minval=-1, maxval=1)
  variables = model.init(jax.random.key(1), x)
  assert set(variables['params']) == {'backbone', 'head'}
  assert set(variables['params']['head']) == {'cbr', 'scale', 'low_classifier', 'high_classifier'}
  logits = model.apply(variables, x)
  assert logits.shape == (2, 65, 70, 6) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  assert float(jnp.abs(logits[0] - logits[1]).max()) > 1e-3
  _, state = model.apply(variables, x, train=True, mutable=['batch_stats'])
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state['batch_stats'],
                       variables['batch_stats'])
  assert moved['head']['cbr']['bn']['mean'] > 0


def test_paper_pooling_is_global_where_the_window_covers_the_features():
  """At 64x64 the 1/16 features (4x4) are smaller than 49x49: the clipped window is global."""
  x = jax.random.uniform(jax.random.key(0), (1, 64, 64, 3), minval=-1, maxval=1)
  glob = lraspp.LRASPPMobileNetV3(BACKBONE, num_classes=3, inter_channels=8)
  paper = glob.clone(pooling='paper')
  variables = glob.init(jax.random.key(1), x)
  np.testing.assert_allclose(paper.apply(variables, x), glob.apply(variables, x), rtol=1e-5,
                             atol=1e-6)


def test_paper_pooling_windows_and_strides():
  """A 2x3 window with stride (2, 3) on 4x6 features: a 2x2 grid of window means."""
  head = lraspp.LRASPPHead(num_classes=3, inter_channels=4, pooling='paper', pool_size=(2, 3),
                           pool_stride=(2, 3))
  rng = np.random.default_rng(0)
  low, high = (jnp.asarray(rng.normal(size=s).astype(np.float32))
               for s in ((1, 8, 12, 5), (1, 4, 6, 7)))
  variables = head.init(jax.random.key(0), low, high, False)
  out, state = head.apply(variables, low, high, False, capture_intermediates=True,
                          mutable=['intermediates'])
  assert out.shape == (1, 8, 12, 3)
  gate_logits = state['intermediates']['scale']['__call__'][0]
  means = np.asarray(high).reshape(1, 2, 2, 2, 3, 7).mean(axis=(2, 4))
  np.testing.assert_allclose(gate_logits, means @ variables['params']['scale']['kernel'],
                             rtol=1e-5, atol=1e-6)
  glob = head.clone(pooling='global').apply(variables, low, high, False)
  assert float(jnp.abs(glob - out).max()) > 1e-3


def test_bad_options_name_what_is_allowed():
  make = lambda **kw: lraspp.LRASPPMobileNetV3(BACKBONE, **kw)
  with pytest.raises(ValueError, match=r"Unknown pooling 'max'; allowed: \['global', 'paper'\]"):
    make(pooling='max')
  with pytest.raises(ValueError, match=r'Invalid pool_size \(0, 3\); allowed: \(height, width\)'):
    make(pool_size=(0, 3))
  with pytest.raises(ValueError, match=r'Invalid pool_stride 4; allowed'):
    make(pool_stride=4)
  with pytest.raises(ValueError, match=r'Invalid num_classes 0; allowed: an integer >= 1'):
    make(num_classes=0)
  with pytest.raises(ValueError, match=r'Invalid inter_channels 1.5'):
    make(inter_channels=1.5)
  with pytest.raises(ValueError, match=r"Unknown tap 'C9'"):
    make(low_tap='C9')
  with pytest.raises(ValueError, match='backbone must be a MobileNetV3Backbone'):
    lraspp.LRASPPMobileNetV3('small')
  with pytest.raises(ValueError, match=r'Input shape \(1, 16, 64, 3\) not allowed'):
    lraspp.init_variables(make(), jax.random.key(0), (16, 64))


def test_summary_counts_torchvisions_lraspp_params():
  counts = summary.summarize(torch_lraspp.torchvision_model(depthwise_impl='conv'), (224, 224))
  assert counts['total']['params'] == 3_221_538   # torchvision's own meta "num_params"
  assert counts['backbone']['params'] + counts['head']['params'] == counts['total']['params']
  assert counts['backbone']['macs'] + counts['head']['macs'] == counts['total']['macs']
  # The head: cbr 960*128 + BN 2*128, gate 960*128, classifiers (40 + 128) * 21 + 2 * 21.
  assert counts['head']['params'] == 960 * 128 * 2 + 256 + 168 * 21 + 42
  assert counts['head']['bn_stats'] == 256


@pytest.mark.parametrize('variant, paper_params', [('large', 1.51e6), ('small', 0.47e6)])
def test_summary_of_the_papers_cityscapes_models(variant, paper_params):
  """Reduced tail (the official rule), 128 filters, 19 classes: the paper's Table 7 params."""
  backbone = MobileNetV3Backbone(variant=variant, output_stride=16, reduced_tail='official',
                                 depthwise_impl='conv')
  counts = summary.summarize(lraspp.LRASPPMobileNetV3(backbone, num_classes=19, pooling='paper'))
  assert round(counts['total']['params'], -4) == paper_params
  assert counts['image_size'] == [1024, 2048]
  assert 'backbone' in summary.format_summary(counts)
