"""Weights in: Keras, torchvision and timm converters, variables checkpoints, the import CLI."""
