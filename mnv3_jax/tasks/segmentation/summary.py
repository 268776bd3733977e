"""Params and MACs of a segmentation model's backbone and head, separately.

The counts are `mnv3_jax.model.summary.summarize`'s, with its conventions: trainable params (BN
scale and offset included, moving statistics counted apart), MACs = multiply-accumulates per
image of the convolutions and dense layers. Not counted: BatchNorm, activations, pooling, the
gate's multiply, the sum of the two classifiers and the bilinear resizes.

Anchors (the paper's figures, Howard et al. 2019, Table 7: Cityscapes val, 19 classes, output
stride 16, 1024x2048 inputs, reduced tail, LR-ASPP with 128 filters; not measured here):
  MobileNetV3-Large: 72.37 mIoU, 1.51M params;  MobileNetV3-Small: 68.38 mIoU, 0.47M params
  (test set, §6.4: Large 72.6, Small 69.4 mIoU).
Ours for those models (`python -m mnv3_jax.tasks.segmentation.summary`; reduced_tail='official',
pooling='paper'): Large 1,505,550 params, 9,318M MACs; Small 467,486 params, 2,689M MACs. The
params agree with the paper's to its 3 digits (torchvision's reduced-tail rule gives 1.75M and
0.52M); the paper's MAdds column was not checked against ours.
torchvision's `lraspp_mobilenet_v3_large` (21 classes, full tail, global gate) has 3,221,538
params, which `summarize(torch_lraspp.torchvision_model())` reproduces.
"""
from typing import Any, Dict, Tuple

from flax import linen as nn

from mnv3_jax.model import summary
from mnv3_jax.model.backbone import MobileNetV3Backbone
from mnv3_jax.tasks.segmentation.lraspp import LRASPPMobileNetV3

PARTS = ('backbone', 'head')


def summarize(model: nn.Module, image_size: Tuple[int, int] = (1024, 2048)) -> Dict[str, Any]:
  """Counts of `model` (an LRASPPMobileNetV3) on one (H, W) image, per part and in total.

  Returns {'image_size': [H, W], 'backbone': {'params', 'bn_stats', 'macs'}, 'head': {...},
  'total': {...}, 'layers': model.summary.summarize's per-layer records}.
  """
  counts = summary.summarize(model, image_size)
  result = {'image_size': counts['image_size']}
  for part in PARTS:
    layers = [r for r in counts['layers'] if r['path'].split('/')[0] == part]
    result[part] = {key: sum(r[key] for r in layers) for key in ('params', 'bn_stats', 'macs')}
  result['total'] = {key: counts[key] for key in ('params', 'bn_stats', 'macs')}
  result['layers'] = counts['layers']
  return result


def format_summary(counts: Dict[str, Any]) -> str:
  """One line per part: params and MACs (millions) of backbone, head and total."""
  h, w = counts['image_size']
  return '\n'.join(f"{part:<8} at {h}x{w}: params {counts[part]['params']:>10,}  "
                   f"MACs {counts[part]['macs'] / 1e6:>9.1f}M"
                   for part in (*PARTS, 'total'))


def main() -> None:
  """Prints the paper's Cityscapes models (reduced tail, 128 filters, 19 classes) at 1024x2048."""
  for variant in ('large', 'small'):
    backbone = MobileNetV3Backbone(variant=variant, output_stride=16, reduced_tail='official',
                                   depthwise_impl='conv')
    model = LRASPPMobileNetV3(backbone, num_classes=19, pooling='paper')
    print(f'LR-ASPP MobileNetV3-{variant.title()}, reduced tail (official), 128 filters:')
    print(format_summary(summarize(model)))


if __name__ == '__main__':
  main()
