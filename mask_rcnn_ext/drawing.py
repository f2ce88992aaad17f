"""Drawing predictions and ground truth with Detectron2's Visualizer, at any image size
(``demo.py`` and examples/quickstart.ipynb)."""

import math

import numpy as np
from detectron2.utils.visualizer import Visualizer

__all__ = ["SHORT_SIDE", "visualizer"]

# Images whose short side is below this are drawn enlarged, by an integer factor, to at least it.
SHORT_SIDE = 480


def visualizer(rgb: np.ndarray, metadata) -> Visualizer:
    """Detectron2's Visualizer for an (H, W, 3) RGB image of any size. Detectron2 sizes labels for
    photos (at least 10 px); on the synthetic sets' 128 x 160 images they covered the objects and
    ran off the edges. Small images are drawn enlarged (nearest pixels, so they stay as they
    are), with the labels Detectron2 gives a photo of the enlarged size."""
    height, width = rgb.shape[:2]
    scale = max(1, math.ceil(SHORT_SIDE / min(height, width)))
    drawing = Visualizer(rgb, metadata, scale=scale)
    if scale > 1:
        # Visualizer multiplies its font size by the scale again when it draws.
        drawing._default_font_size = max(math.sqrt(height * width) * scale // 90, 10) / scale
    return drawing
