"""SSDLite on MobileNetV3: outputs line up with the default boxes, variables and their init, one
jitted training step (loss and gradients) and detections, bad options.

Parity with torchvision's SSDLite: tests/interop/test_torch_ssdlite.py.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnv3_jax.model.backbone import MobileNetV3Backbone
from mnv3_jax.tasks.detection import loss, postprocess, ssdlite

BACKBONE = MobileNetV3Backbone(variant='small', width=0.5, reduced_tail='torchvision',
                               depthwise_impl='conv')
SIZE = (64, 96)


@pytest.fixture(scope='module')
def model_and_variables():
  model = ssdlite.SSDLiteMobileNetV3(BACKBONE, num_classes=4, extra_widths=(64, 32, 32, 16))
  return model, ssdlite.init_variables(model, jax.random.key(0), SIZE)


def test_outputs_line_up_with_default_boxes_and_init(model_and_variables):
  model, variables = model_and_variables
  params = variables['params']
  assert set(params) == {'backbone', 'head', *(f'extra_{i}_{role}' for i in range(4)
                                               for role in ('expand', 'depthwise', 'project'))}
  assert set(params['head']) == {f'{kind}_{k}{part}' for kind in ('box', 'class')
                                 for k in range(6) for part in ('', '_depthwise')}
  # C4 of Small: bneck 9's expansion (288 at width 1, halved to make_divisible(144) = 144 here).
  assert params['head']['box_0_depthwise']['conv']['kernel'].shape == (3, 3, 1, 144)
  assert params['head']['class_5']['kernel'].shape == (16, 6 * 4)
  kernel = np.asarray(params['extra_0_expand']['conv']['kernel'])
  assert 0.025 < kernel.std() < 0.035 and not np.asarray(params['head']['box_0']['bias']).any()
  x = jax.random.uniform(jax.random.key(1), (2, *SIZE, 3), minval=-1, maxval=1)
  box, cls = jax.jit(model.apply)(variables, x)
  a = len(model.default_boxes(SIZE))
  assert box.shape == (2, a, 4) and cls.shape == (2, a, 4) and box.dtype == jnp.float32


def test_jitted_training_step_and_detections(model_and_variables):
  model, variables = model_and_variables
  anchors = model.default_boxes(SIZE)
  x = jax.random.uniform(jax.random.key(2), (2, *SIZE, 3), minval=-1, maxval=1)
  gt_boxes = jnp.array([[[10, 8, 50, 40], [0, 0, 0, 0]], [[30, 20, 90, 60], [5, 5, 20, 30]]],
                       jnp.float32)
  gt_labels, gt_valid = jnp.array([[1, 0], [3, 2]]), jnp.array([[True, False], [True, True]])

  def total_loss(params):
    (box, cls), updates = model.apply({**variables, 'params': params}, x, train=True,
                                      mutable=['batch_stats'])
    parts = loss.ssd_loss(box, cls, gt_boxes, gt_labels, gt_valid, anchors)
    return parts['bbox_regression'] + parts['classification'], updates

  (value, updates), grads = jax.jit(jax.value_and_grad(total_loss, has_aux=True))(
      variables['params'])
  assert np.isfinite(float(value)) and float(value) > 0
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert np.abs(np.asarray(grads['head']['class_0']['kernel'])).max() > 0
  assert not np.allclose(updates['batch_stats']['extra_0_expand']['bn']['mean'],
                         variables['batch_stats']['extra_0_expand']['bn']['mean'])
  box, cls = jax.jit(model.apply)(variables, x)
  detect = jax.jit(jax.vmap(functools.partial(postprocess.detections, anchors=anchors,
                                              image_size=SIZE, max_detections=10)))
  out = detect(box, cls)
  assert out.boxes.shape == (2, 10, 4) and out.valid.any()
  valid_boxes = np.asarray(out.boxes)[np.asarray(out.valid)]
  assert (valid_boxes >= 0).all() and (valid_boxes[:, 2] <= 96).all()


@pytest.mark.parametrize('options, match', [
    (dict(backbone=BACKBONE.clone(output_stride=16)), 'output_stride 32'),
    (dict(num_classes=1), r'Invalid num_classes 1'),
    (dict(extra_widths=(64, 1)), r'Invalid extra_widths \(64, 1\)'),
    (dict(aspect_ratios=((2, 3),) * 5), r'aspect_ratios has 5 maps.*2 \+ len\(extra_widths\) = 6'),
    (dict(aspect_ratios=((2, 0),) * 6), r'Invalid aspect_ratios'),
])
def test_bad_options(options, match):
  with pytest.raises(ValueError, match=match):
    ssdlite.SSDLiteMobileNetV3(**{'backbone': BACKBONE, **options})
