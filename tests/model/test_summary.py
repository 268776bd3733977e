"""The summary tool: totals against the official figures, the per-layer table, the CLI."""
import json
import subprocess
import sys

import pytest

from mnv3_jax import model as model_lib
from mnv3_jax.model import summary


def _summary(image_size=(224, 224), **options):
  return summary.summarize(model_lib.MobileNetV3(**options), image_size)


@pytest.mark.parametrize('variant, params, bn_stats, macs', [
    # Keras' trainable / non-trainable counts; MACs: official README 217M, measured 56.5M.
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
