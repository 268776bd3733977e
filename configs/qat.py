r"""Quantization-aware fine-tuning on ImageNet from float weights: the int8 model that ships.

  python main.py --config=configs/qat.py --config.init_from=FLOAT_WORKDIR --workdir=DIR
  python main.py --config=configs/qat.py:variant=small --config.init_from=FLOAT_WORKDIR \
      --workdir=DIR
  python -m mnv3_jax.export --workdir=DIR --out=EXPORT --int8    # int8 with the trained ranges

The network trains with TFLite's int8 arithmetic simulated (config.quant='qat':
mnv3_jax/compress/qat_model.py): BatchNorm folded into per-channel int8 weights, activations
fake-quantized with moving ranges. The schedule follows torchvision's QAT recipe
(references/classification/README.md, mobilenet_v3_large: 90 epochs from the float weights,
weight decay 1e-5, observers frozen after 4 epochs, BatchNorm statistics after 3). torchvision's
lr 0.001 is for SGD; with this project's RMSProp the fine-tuning starts at the float recipe's
final learning rate (0.01 x 0.99^333 ~ 3.5e-4 per 4096 images) and decays as the recipe does.

Anchors (ImageNet top-1, not measured here: no accelerator run exists yet):
  official int8 by post-training quantization (TF-slim README): Large 75.2 -> 73.9,
    Small 67.5 -> 64.9 (the paper's Table 4: 73.8 / 64.9);
  torchvision QAT, Large: 74.042 float -> 73.004 int8 (qnnpack).
"""
from configs import default


def get_config(arg: str | None = None):
  args = default.parse_arg(arg)
  c = default.variant_config(args.pop('variant', 'large'), ','.join(
      f'{k}={v}' for k, v in args.items()))
  c.quant = 'qat'
  c.num_epochs = 90.0
  c.optim.base_learning_rate = 3.5e-4
  c.optim.warmup_epochs = 0.0
  c.optim.weight_decay = 1e-5
  c.qat.freeze_bn_epochs = 3.0
  c.qat.freeze_ranges_epochs = 4.0
  c.eval_every_steps = 2500
  return c
