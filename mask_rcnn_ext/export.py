"""Export a Mask R-CNN (mask_rcnn_ext's heads, any pooler type, or stock ones) for deployment, then
check the exported model against eager PyTorch on a sample image and on one of another size::

    python -m mask_rcnn_ext.export --config-file CFG --format {torchscript,onnx} --output DIR \\
        [--method {tracing,scripting}] [--sample-image IMAGE] [--skip-weight-checks] \\
        [MODEL.WEIGHTS PATH ...]

Weights that leave model weights unset or hold NaN or Inf, or none at all, are refused unless
``--skip-weight-checks`` is given (:class:`~mask_rcnn_ext.checkpoint.SafeCheckpointer`).

As in Detectron2's deployment tools: the exported model runs the network on one image that is
already resized (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), as a (3, H, W) tensor in
``INPUT.FORMAT``, and returns the detections before post-processing: boxes in that image's pixels,
scores, classes, and each box's mask probabilities (N, 1, M, M); Detectron2's
``detector_postprocess`` pastes them into the original image.

- ``torchscript``, ``--method tracing`` (default): ``DIR/model.ts``, a traced
  ``detectron2.export.TracingAdapter``: ``model(image)`` returns the tuple of tensors named in
  ``DIR/outputs.txt``.
- ``torchscript``, ``--method scripting``: ``DIR/model.ts`` from Detectron2's
  ``scripting_with_instances``: ``model.inference([{"image": image}], do_postprocess=False)``,
  loaded with :func:`load_scripted` (a plain ``torch.jit.load`` in another process cannot find
  the Instances class it returns).
- ``onnx``: ``DIR/model.onnx`` (opset 17; image height and width dynamic), traced as above, with
  the outputs named; run with ONNX Runtime.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.export import TracingAdapter, scripting_with_instances, torchscript_patch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from torch import Tensor

from . import load_config
from .checkpoint import SafeCheckpointer
from .data import synthetic
from .data.images import read_image

__all__ = ["FORMATS", "ONNX_OPSET", "compare", "export", "largest_differences", "load_scripted",
           "main", "other_size", "sample_image"]

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
METHODS = ("tracing", "scripting")
# torchvision's RoIAlign exports its aligned (half-pixel) form from opset 16.
ONNX_OPSET = 17
# Instance fields that scripted models declare (Detectron2's scripting needs them all upfront).
_SCRIPTED_FIELDS = {"proposal_boxes": Boxes, "objectness_logits": Tensor, "pred_boxes": Boxes,
                    "scores": Tensor, "pred_classes": Tensor, "pred_masks": Tensor,
                    "pred_mask_iou": Tensor, "box_scores": Tensor}


def sample_image(cfg, path: str | None = None) -> Tensor:
    """The image the export is checked on, resized as at test time -> (3, H, W) in
    ``INPUT.FORMAT``: ``path``, or a synthetic image (mask_rcnn_ext.data.synthetic)."""
    if path is None:
        image, _ = synthetic.make_image(np.random.default_rng(0))  # RGB
        image = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
    else:
        image = read_image(path, cfg.INPUT.FORMAT)
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(image).apply_image(np.ascontiguousarray(image))
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _inference(model, inputs):
    """What is exported: the detections of one image, before post-processing."""
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


def _tracing_adapter(model, image: Tensor) -> TracingAdapter:
    """The traceable form of ``model``, run once on ``image``: its output schema (how the traced
    model's tuple of tensors maps back to instances) is known from then on."""
    adapter = TracingAdapter(model, [{"image": image}], _inference).eval()
    with torch.no_grad():
        adapter(image)
    return adapter


def _output_names(adapter: TracingAdapter) -> list[str]:
    """The traced outputs' names: the instance fields in the flattened order, then the size."""
    (instances_schema,) = adapter.outputs_schema.schemas[0].schemas
    return [*instances_schema.keys, "image_size"]


@contextlib.contextmanager
def _without_generic_warnings():
    """No TracerWarning (Detectron2's, torchvision's and PyTorch's code converts tensors to Python
    values while traced: 17 of them per model, the same whatever the model) and no notice that
    ``torch.jit`` is deprecated, in the block. Whether a trace holds for other inputs is what
    :func:`main`'s check on a second image of another size tells; the deprecation is PyTorch's
    plan, said once in docs/deploying.md."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated",
                                category=FutureWarning)
        yield


def export(model, image: Tensor, output: Path, fmt: str, method: str = "tracing") -> Path:
    """Export ``model`` (eval mode) into folder ``output`` in format ``fmt`` (tracing on
    ``image``); returns the file written."""
    output.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx" and method != "tracing":
        raise ValueError("ONNX export traces the model; --method scripting is for torchscript")
    with torch.no_grad(), _without_generic_warnings():
        if method == "scripting":
            path = output / "model.ts"
            scripting_with_instances(model, _SCRIPTED_FIELDS).save(str(path))
            # The names of a traced model.ts that this one replaced: they describe it no more.
            stale = output / "outputs.txt"
            if stale.exists():
                logger.warning("removing %s: it named the outputs of the traced model that %s "
                               "replaced", stale, path)
                stale.unlink()
            return path
        adapter = _tracing_adapter(model, image)
        names = _output_names(adapter)
        if fmt == "torchscript":
            path = output / "model.ts"
            torch.jit.trace(adapter, (image,)).save(str(path))
            (output / "outputs.txt").write_text("\n".join(names) + "\n")
            return path
        path = output / "model.onnx"
        buffer = io.BytesIO()  # written whole once it succeeded: no truncated file on failure
        torch.onnx.export(adapter, (image,), buffer, opset_version=ONNX_OPSET, dynamo=False,
                          input_names=["image"], output_names=names,
                          dynamic_axes={"image": [1, 2]})
        path.write_bytes(buffer.getvalue())
        return path


def load_scripted(path: str | Path) -> torch.jit.ScriptModule:
    """A model exported with ``--method scripting``, loaded in any process; call
    ``model.inference([{"image": image}], do_postprocess=False)``.

    Its detections are instances of the class that Detectron2's scripting made,
    ``ScriptedInstancesN``, which a plain ``torch.jit.load`` in another process cannot find. That
    class is made again here, with the same number (read from the file) and fields."""
    with zipfile.ZipFile(path) as archive:
        numbers = {int(found.group(1)) for name in archive.namelist()
                   if (found := re.search(r"/torchscript_patch(\d+)\.py$", name))}
    if len(numbers) != 1:
        raise ValueError(f"{path} is not a model exported with --method scripting (it holds "
                         f"{len(numbers)} scripted Instances classes)")
    (number,) = numbers
    if number <= torchscript_patch._counter:  # made by this process already (it exported it)
        return torch.jit.load(str(path))
    # Detectron2 numbers its classes with this counter.
    torchscript_patch._counter = number - 1
    with torchscript_patch.patch_instances(_SCRIPTED_FIELDS):
        return torch.jit.load(str(path))


def run_exported(path: Path, model, image: Tensor, method: str = "tracing") -> Instances:
    """The exported model at ``path`` on ``image`` -> its detections (as eager's)."""
    adapter = _tracing_adapter(model, image)
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = [torch.from_numpy(o) for o in session.run(None, {"image": image.numpy()})]
        return adapter.outputs_schema(outputs)[0]["instances"]
    loaded = load_scripted(path) if method == "scripting" else torch.jit.load(str(path))
    if method == "scripting":
        scripted = loaded.inference([{"image": image}], do_postprocess=False)[0]
        return Instances(scripted.image_size, **scripted.get_fields())
    return adapter.outputs_schema(loaded(image))[0]["instances"]


def largest_differences(eager: Instances, exported: Instances) -> dict[str, float]:
    """Per field, the largest absolute difference (boxes in pixels), and the share of mask pixels
    on the other side of 0.5; detections must match one to one."""
    if len(eager) != len(exported):
        raise RuntimeError(f"the exported model found {len(exported)} instances, eager "
                           f"{len(eager)}")
    differences = {}
    for name, value in eager.get_fields().items():
        # Boxes, or the tensor of scripted Boxes.
        value, other = (getattr(v, "tensor", v) for v in (value, exported.get(name)))
        differences[name] = float((value.double() - other.double()).abs().max()) if len(value) \
            else 0.0
        if name == "pred_masks":
            differences["pred_masks > 0.5 (share of pixels differing)"] = float(
                ((value > 0.5) != (other > 0.5)).double().mean()) if len(value) else 0.0
    return differences


def compare(model, path: Path, image: Tensor, method: str = "tracing") -> dict[str, float]:
    """Largest differences between ``model`` (eager) and its export at ``path`` on ``image``."""
    with torch.no_grad(), _without_generic_warnings():
        eager = _inference(model, [{"image": image}])[0]["instances"]
        return largest_differences(eager, run_exported(path, model, image, method))


def other_size(image: Tensor) -> Tensor:
    """``image`` (3, H, W) mirrored and cropped to 7/8 of its height and 3/4 of its width: an
    image of another size and content, on which a trace that froze a size or a count fails."""
    height, width = image.shape[1:]
    return image[:, : height * 7 // 8, : width * 3 // 4].flip(-1).contiguous()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--method", choices=METHODS, default="tracing",
                        help="torchscript only: trace (default) or script the model")
    parser.add_argument("--output", required=True, type=Path, metavar="DIR")
    parser.add_argument("--sample-image", metavar="IMAGE",
                        help="image to trace and check on (default: a synthetic image)")
    parser.add_argument("--skip-weight-checks", action="store_true",
                        help="export weights that leave model weights unset (missing, or of "
                             "another shape) or hold NaN or Inf, which is otherwise refused")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides, e.g. MODEL.WEIGHTS output/model_final.pth")
    return parser


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    cfg = load_config(args.config_file, [*args.opts, "MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    SafeCheckpointer(model, check_weights=not args.skip_weight_checks).load(cfg.MODEL.WEIGHTS)
    image = sample_image(cfg, args.sample_image)
    path = export(model, image, args.output, args.format, args.method)
    checked = {"the sample image": image, "a second image of another size": other_size(image)}
    differences: dict[str, float] = {}
    for description, checked_image in checked.items():
        try:
            found = compare(model, path, checked_image, args.method)
        except RuntimeError as error:
            raise RuntimeError(f"{path} on {description}: {error}") from error
        for name, value in found.items():
            differences[name] = max(differences.get(name, 0.0), value)
    sizes = " and ".join(f"{description} ({shown.shape[1]} x {shown.shape[2]})"
                         for description, shown in checked.items())
    print(f"wrote {path}; on {sizes}, exported vs eager, largest differences:")
    for name, value in differences.items():
        print(f"  {name}: {value:.3g}")
    return differences


if __name__ == "__main__":
    main()
