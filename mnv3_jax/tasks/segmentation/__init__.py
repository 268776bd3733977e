"""Semantic segmentation: MobileNetV3 + LR-ASPP, its data and metrics."""
