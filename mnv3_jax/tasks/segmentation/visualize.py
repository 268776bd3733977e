"""A picture of segmentation results: image | ground truth | prediction, one row per example (PNG).

Classes are drawn in a fixed palette (class 0 black, then distinct colours; Cityscapes' 19 and
ADE20K's 150 classes get distinct colours too); ignored pixels are white.
"""
import colorsys
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_FIXED = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25],
                   [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
                   [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
                   [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195],
                   [128, 128, 0], [255, 215, 180], [0, 0, 128]], np.uint8)
IGNORE_COLOUR = (255, 255, 255)
TITLES = ('image', 'ground truth', 'prediction')


def palette(num_classes: int) -> np.ndarray:
  """uint8 (num_classes, 3): the fixed colours, then evenly spaced hues for more classes."""
  extra = [np.array(colorsys.hsv_to_rgb((i * 0.618) % 1, 0.7 + 0.3 * (i % 2), 0.6 + 0.4 * (i % 3 > 0)))
           * 255 for i in range(max(0, num_classes - len(_FIXED)))]
  colours = np.concatenate([_FIXED[:num_classes], np.asarray(extra, np.uint8).reshape(-1, 3)])
  return colours.astype(np.uint8)


def colourize(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """(H, W) int classes (anything outside [0, num_classes) = ignored) -> uint8 (H, W, 3)."""
  labels = np.asarray(labels)
  valid = (labels >= 0) & (labels < num_classes)
  out = palette(num_classes)[np.where(valid, labels, 0)]
  out[~valid] = IGNORE_COLOUR
  return out


def grid(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, num_classes: int,
         scale: int = 4, gap: int = 4) -> Image.Image:
  """An RGB picture: a title row, then per example image | ground truth | prediction.

  images: (N, H, W, 3) float in [-1, 1]; labels, predictions: (N, H, W) ints; each panel is
  enlarged `scale` times (nearest neighbour).
  """
  images = np.clip(np.round((np.asarray(images, np.float32) + 1) * 127.5), 0, 255).astype(np.uint8)
  n, h, w = np.asarray(labels).shape
  ph, pw, title = h * scale, w * scale, 14
  canvas = Image.new('RGB', (3 * pw + 4 * gap, title + n * (ph + gap) + gap), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()
  for col, text in enumerate(TITLES):
    draw.text((gap + col * (pw + gap), 2), text, fill=(0, 0, 0), font=font)
  for row in range(n):
    panels = (images[row], colourize(labels[row], num_classes),
              colourize(predictions[row], num_classes))
    for col, panel in enumerate(panels):
      tile = Image.fromarray(panel).resize((pw, ph), Image.NEAREST)
      canvas.paste(tile, (gap + col * (pw + gap), title + gap + row * (ph + gap)))
  return canvas


def png_bytes(picture: Image.Image) -> bytes:
  buffer = io.BytesIO()
  picture.save(buffer, format='PNG')
  return buffer.getvalue()
