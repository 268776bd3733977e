"""Every default of the model and data options, in one place, in plain Python (no imports).

`MobileNetV3`'s fields, `configs/` and `input_pipeline.default_data_config()` read them from here,
so a default changes in one line. The config files import this module (never jax or TensorFlow).
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

# `config.data`: ImageNet with the official (Inception) MobileNetV3 preprocessing.
DATA = dict(
    # A TFDS image-classification name, 'image_folder' or 'digits' (see mnv3_jax/data/datasets.py).
    dataset='imagenet2012',
    # TFDS data dir (None: the TFDS default; gs:// allowed), or the root of an image folder.
    # None = unset: configs hold it as a str placeholder (`config_dict.placeholder(str)`).
    data_dir=None,
    train_split='train',
    eval_split='validation',  # 'test' for digits.
    # image_folder without split subfolders: the fraction of each class held out as eval_split.
    folder_holdout_fraction=0.1,
    # image_folder: images with more pixels (width x height; x frames for a GIF) are skipped and
    # counted in a warning; only their headers are read, never decoded. 40 M holds a 7300x5480
    # photo; one decoded as RGB takes 120 MB.
    max_image_pixels=40_000_000,
    image_size=224,  # Side S of the square images, in pixels (train and eval).
    # Training crop: area as a fraction of the image's (at least 10%, as in TF-slim), and
    # width/height aspect ratio; resized to S x S (bilinear).
    crop_area_range=(0.05, 1.0),
    aspect_ratio_range=(3 / 4, 4 / 3),
    random_flip=True,  # Training: horizontal flip with probability 1/2.
    eval_crop_fraction=0.875,  # Eval: the central square of this fraction of the shorter side.
    shuffle_buffer=16384,  # Records; capped at the process's shard size (full shuffle if smaller).
    cache=False,  # Training: keep the encoded records (or image files) in memory after epoch 1.
    num_parallel_calls=-1,  # Decode/augment parallelism; -1 = tf.data.AUTOTUNE.
)

# `config.data` of segmentation (mnv3_jax/tasks/segmentation/data.py has the meaning of each).
SEGMENTATION_DATA = dict(
    dataset='seg_shapes', data_dir=None, train_split='train', eval_split=None, num_classes=None,
    ignore_label=255, crop_size=64, scale_range=(0.5, 2.0), random_flip=True, eval_size=None,
    shuffle_buffer=4096, num_parallel_calls=-1)

# `config.data` of detection (mnv3_jax/tasks/detection/data.py has the meaning of each).
DETECTION_DATA = dict(
    dataset='det_shapes', data_dir=None, train_split='train', eval_split=None, image_size=128,
    max_boxes=None, crop_min_ious=(0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0), crop_scale_range=(0.3, 1.0),
    crop_aspect_range=(0.5, 2.0), crop_trials=40, random_flip=True, shuffle_buffer=4096,
    num_parallel_calls=-1)
