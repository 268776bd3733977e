"""Dense-prediction tasks on the MobileNetV3 backbone: semantic segmentation, detection."""
