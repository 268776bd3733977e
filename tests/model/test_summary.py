"""The summary tool: totals against the official figures and an independent count of Keras'
layers, the per-layer table, the CLI."""
import json
import math
import subprocess
import sys

import keras
import pytest

from mnv3_jax import model as model_lib
from mnv3_jax.model import summary


def _summary(image_size=(224, 224), **options):
  return summary.summarize(model_lib.MobileNetV3(**options), image_size)


@pytest.mark.parametrize('variant, params, bn_stats, macs', [
    # Keras' trainable / non-trainable counts; MACs: Large the official README's 217M; Small's
    # official 66M describes a 1280 head (KNOWLEDGE.md), so its 56.5M is Keras' layers counted
    # independently, as in test_equals_an_analytic_count_of_keras_layers (56,510,400 exactly).
    ('large', 5_483_032, 24_400, 217e6),
    ('small', 2_542_856, 12_112, 56.5e6),
])
def test_totals_match_official(variant, params, bn_stats, macs):
  s = _summary(variant=variant)
  assert s['params'] == params
  assert s['bn_stats'] == bn_stats
  assert abs(s['macs'] / macs - 1) < 0.01, s['macs']
  # The table accounts for every variable and every MAC.
  assert sum(r['params'] for r in s['layers']) == s['params']
  assert sum(r['bn_stats'] for r in s['layers']) == s['bn_stats']
  assert sum(r['macs'] for r in s['layers']) == s['macs']


def _keras_count(keras_model):
  """(trainable params, non-trainable params, MACs) of a Keras model, from its own layers.

  MACs: output elements x kernel fan-in for Conv2D (kh*kw*C_in) and DepthwiseConv2D (kh*kw), out
  x in for Dense. Keras' SE 1x1 convs and the head's last two 1x1 convs are Conv2D on pooled
  (1, 1) maps, so they count once per image, as summarize's Dense layers do.
  """
  macs = 0
  for layer in keras_model.layers:
    if isinstance(layer, keras.layers.DepthwiseConv2D):
      assert layer.depth_multiplier == 1 and layer.kernel.shape[-2:] == (layer.input.shape[-1], 1)
      fan_in = layer.kernel.shape[0] * layer.kernel.shape[1]
    elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
      assert getattr(layer, 'groups', 1) == 1
      fan_in = math.prod(layer.kernel.shape[:-1])
    else:
      assert not layer.trainable_weights or isinstance(
          layer, keras.layers.BatchNormalization), layer.name
      continue
    macs += math.prod(layer.output.shape[1:]) * fan_in
  return (sum(math.prod(w.shape) for w in keras_model.trainable_weights),
          sum(math.prod(w.shape) for w in keras_model.non_trainable_weights), macs)


@pytest.mark.parametrize('build, keras_options, options', [
    # Measured 2026-12-01: Small 2,542,856 / 12,112 / 56,510,400; Large 5,483,032 / 24,400 /
    # 216,589,760; Small minimalistic 2,044,736 / 12,112 / 52,288,448; Large 0.75 3,993,528 /
    # 19,088 / 154,560,624. Building the four Keras models (weights=None) takes 5-12 s.
    ('MobileNetV3Small', {}, {'variant': 'small'}),
    ('MobileNetV3Large', {}, {'variant': 'large'}),
    ('MobileNetV3Small', {'minimalistic': True}, {'variant': 'small', 'minimalistic': True}),
    ('MobileNetV3Large', {'alpha': 0.75}, {'variant': 'large', 'width': 0.75}),
])
def test_equals_an_analytic_count_of_keras_layers(build, keras_options, options):
  """An external anchor for the MACs: keras.applications' own graph, counted here."""
  keras_model = getattr(keras.applications, build)(
      weights=None, input_shape=(224, 224, 3), include_preprocessing=False, **keras_options)
  params, non_trainable, macs = _keras_count(keras_model)
  s = _summary(**options)
  assert (s['params'], s['bn_stats'], s['macs']) == (params, non_trainable, macs)


def test_layer_rows_follow_the_convention():
  rows = {r['path']: r for r in _summary(variant='small')['layers']}
  stem = rows['stem/conv']      # 3x3 stride-2 conv 3 -> 16: 112*112 * 3*3*3 * 16
  assert (stem['kind'], stem['output_shape'], stem['kernel_shape']) == (
      'Conv', [112, 112, 16], [3, 3, 3, 16])
  assert stem['macs'] == 112 * 112 * 3 * 3 * 3 * 16
  dw = rows['block_3/depthwise/conv']    # 5x5 stride-2 depthwise on 96 channels, 28 -> 14
  assert dw['kind'] == 'DepthwiseConv' and dw['output_shape'] == [14, 14, 96]
  assert dw['macs'] == 14 * 14 * 5 * 5 * 96
  se = rows['block_3/se/reduce']        # applied once per image, after pooling
  assert se['output_shape'] == [1, 1, 24] and se['macs'] == 96 * 24
  assert rows['logits']['macs'] == 1024 * 1000
  assert rows['stem/bn']['macs'] == 0 and rows['stem/bn']['bn_stats'] == 32


def test_macs_scale_quadratically_with_resolution():
  small, big = _summary((224, 224)), _summary((448, 448))
  assert 3.8 < big['macs'] / small['macs'] <= 4.0
  # Exactly 4x for every layer with a spatial output; unchanged after pooling and in SE.
  for a, b in zip(small['layers'], big['layers']):
    spatial = len(a['output_shape']) == 3 and a['output_shape'][:2] != [1, 1]
    assert b['macs'] == (4 * a['macs'] if spatial else a['macs']), a['path']
  assert big['params'] == small['params']


def test_non_square_resolution():
  s = _summary((224, 160))
  head = next(r for r in s['layers'] if r['path'] == 'head_conv/conv')
  assert head['output_shape'] == [7, 5, 960]
  full = _summary()['macs']
  # Spatial layers scale by exactly 160/224; the pooled head and SE layers do not scale.
  assert 160 / 224 < s['macs'] / full < 0.75


def test_cli_json_matches_library():
  out = subprocess.run(
      [sys.executable, '-m', 'mnv3_jax.model.summary', '--variant', 'small', '--width', '0.75',
       '--resolution', '192x160', '--no-se', '--json'],
      capture_output=True, text=True, check=True, timeout=120)
  got = json.loads(out.stdout)
  assert got['options']['variant'] == 'small' and got['options']['se'] is False
  want = _summary((192, 160), variant='small', width=0.75, se=False)
  assert {k: got[k] for k in want} == want
  assert not any('/se/' in r['path'] for r in got['layers'])


def test_cli_table_and_errors(capsys):
  assert summary.main(['--variant', 'large', '--last_stage', 'v2', '--resolution', '96']) == 0
  text = capsys.readouterr().out
  assert 'head_depthwise/conv' in text and 'DepthwiseConv' in text
  s = _summary((96, 96), last_stage='v2')
  assert f"trainable params {s['params']:,}" in text and f"MACs {s['macs']:,}" in text
  for argv, bad in [(['--resolution', '31x224'], '31'), (['--resolution', '224x'], '224x'),
                    (['--width', '-1'], '-1')]:
    with pytest.raises(SystemExit) as e:
      summary.main(argv)
    assert e.value.code == 2
    assert bad in capsys.readouterr().err


def test_parse_resolution():
  assert summary.parse_resolution('224') == (224, 224)
  assert summary.parse_resolution('33x75') == (33, 75)
  assert summary.parse_resolution('224X160') == (224, 160)
