"""Every default of the model options, in one place, in plain Python (no jax, no TensorFlow).

`MobileNetV3`'s fields and `configs/` read them from here, so a default changes in one line.
"""

MODEL = dict(
    variant='large',
    width=1.0,
    minimalistic=False,
    num_classes=1000,
    dropout_rate=0.2,
    # 'auto': bfloat16 compute on TPU/GPU, float32 on CPU; or 'float32' / 'bfloat16'.
    dtype='auto',
    bn_momentum=0.997,       # TF-slim, Model Garden (the paper: 0.99; Keras: 0.999)
    bn_epsilon=1e-3,
    activation='hard_swish',
    se=True,
    se_gate='hard_sigmoid',
    stem_filters=16,
    last_stage='efficient',
    depthwise_impl='auto',
    padding='same',
    input_norm='none',
)
