"""The network: block tables, blocks, activations, the MobileNetV3 module, its fused inference
form and its param/MAC summary."""
from mnv3_jax.model.mobilenet_v3 import (DTYPES, IMAGENET_MEAN, IMAGENET_STD, INPUT_NORMS,
                                         LAST_STAGES, PADDINGS, MobileNetV3, check_input_shape,
                                         create_model, init_variables, validate_options)
from mnv3_jax.model.tables import LARGE, SMALL, STEM_FILTERS, TABLES, Bneck
