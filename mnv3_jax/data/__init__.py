"""Input: datasets (TFDS, image folders, the embedded digits) and the tf.data pipelines."""
