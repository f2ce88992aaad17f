"""RoIAlign (Mask R-CNN, He et al. 2017, Sec. 3) with average or max aggregation.

Coordinates: boxes are (x1, y1, x2, y2) in image pixels; ``spatial_scale`` maps them onto the
feature map. With ``aligned=True`` the box is shifted by -0.5 feature pixels first, so that a
feature pixel's centre sits at a half-integer image coordinate, as in Detectron2's ROIAlignV2;
with ``aligned=False`` it is not, and boxes smaller than one feature pixel are grown to one
(the original, legacy behaviour; Detectron2's ROIAlign).

Each of the P x Q output bins takes ``sampling_ratio`` x ``sampling_ratio`` regularly spaced
bilinear samples (``<= 0``: ceil(box side / bins) per side, per box, as Detectron2 and
torchvision). A sample more than one pixel outside the map reads 0; one within that margin is
clamped onto the map.

``mode="avg"`` averages a bin's samples: exactly torchvision's ``roi_align``.
``mode="max"`` takes the maximum over a bin's samples, each sample being the full bilinear
interpolation of its four neighbours. (ONNX Runtime's RoiAlign "max" takes the maximum of the four
weighted neighbour *terms* instead, and other implementations differ again; results are not
interchangeable.) Out-of-map samples (value 0) take part in the maximum; a bin with no samples
(an empty box with adaptive sampling) is 0. The gradient flows to the maximising sample (the
first one, on exact ties, as ``torch.max``).

Gradients are taken with respect to the features, not the boxes (as torchvision).
"""

from __future__ import annotations

from torch import Tensor
from torch.nn.modules.utils import _pair

from .backends import RoIPoolingModule, pool

__all__ = ["roi_align", "ROIAlign"]

_MODES = ("avg", "max")


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"roi_align: mode must be one of {_MODES}, got {mode!r}")


def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    mode: str = "avg",
) -> Tensor:
    """RoIAlign with average or max aggregation (see the module docstring for the conventions).

    Args:
        input: (N, C, H, W) features.
        boxes: (K, 5) rows (batch_index, x1, y1, x2, y2), or a list of N Tensor[L, 4].
        output_size: (P, Q) bins, or one int for both.
        spatial_scale: feature-map pixels per image pixel (e.g. 1/16).
        sampling_ratio: samples per bin side; ``<= 0`` is adaptive.
        aligned: shift boxes by -0.5 feature pixels (half-pixel convention).
        mode: "avg" or "max".

    Returns:
        (K, C, P, Q).
    """
    _check_mode(mode)
    return pool(f"roi_align_{mode}", input, boxes, _pair(output_size), spatial_scale,
                sampling_ratio=sampling_ratio, aligned=aligned)


class ROIAlign(RoIPoolingModule):
    """:func:`roi_align` as a module: ``forward(input, boxes)``."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float,
                 sampling_ratio: int, aligned: bool = False, mode: str = "avg"):
        _check_mode(mode)
        super().__init__(f"roi_align_{mode}", output_size, spatial_scale, sampling_ratio, aligned)
        self.mode = mode

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode!r}"
