"""The compute-reduction toolbox: quantization-aware training (and soon distillation, NetAdapt)."""
