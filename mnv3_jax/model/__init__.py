"""The network: block tables, blocks, activations, options, the MobileNetV3 module, its fused
inference form and its param/MAC summary."""
from mnv3_jax.model.mobilenet_v3 import BlockSpec, MobileNetV3, init_variables
from mnv3_jax.model.options import (DTYPES, IMAGENET_MEAN, IMAGENET_STD, INPUT_NORMS, LAST_STAGES,
                                    PADDINGS, check_input_shape, compute_dtype, validate_options)
from mnv3_jax.model.tables import LARGE, SMALL, STEM_FILTERS, TABLES, Bneck

__all__ = ['Bneck', 'BlockSpec', 'DTYPES', 'IMAGENET_MEAN', 'IMAGENET_STD', 'INPUT_NORMS', 'LARGE',
           'LAST_STAGES', 'MobileNetV3', 'PADDINGS', 'SMALL', 'STEM_FILTERS', 'TABLES',
           'check_input_shape', 'compute_dtype', 'init_variables', 'validate_options']
