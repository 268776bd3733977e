"""Layers and kernels under the blocks: BatchNorm, the 1x1 matmul, depthwise and stem convolutions
(pure XLA and the native CPU kernels of `csrc/`, built by `native`)."""
