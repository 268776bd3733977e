"""What the blocks are made of: BatchNorm, the 1x1 matmul, depthwise and stem convolutions (pure
XLA, and the native CPU kernels of `csrc/` built by `native`), and the fused inference ops
(`fused`) that the model's fusion pass calls."""
