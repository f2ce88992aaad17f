"""Whole models with mask_rcnn_ext's heads exported as Detectron2 users deploy them (traced with
TracingAdapter, exported to ONNX and run in ONNX Runtime, scripted with scripting_with_instances),
for every pooler type and with mask scoring, checked against the eager model on an image of
another size than the one traced, with another number of detections (stock Detectron2's traced
models handle both too)."""

import functools
import warnings

import pytest
import torch
from detectron2.modeling import build_model

from mask_rcnn_ext import export, load_config
from mask_rcnn_ext.checkpoint import UnusableWeightsError
from support.models import synthetic_images

CONFIG = "configs/Synthetic/mask_rcnn_R_18_FPN_cpu.yaml"
POOLER_TYPES = ("ROIAlignV2", "ROIAlignMax", "PreciseROIPool", "ROIWarp", "ROIPool")
# form -> (how export() is called, the largest differences allowed per field).
FORMS = {
    "traced": (("torchscript", "tracing"), {"pred_boxes": 1e-4, "scores": 1e-5,
                                            "pred_masks": 1e-5}),
    "scripted": (("torchscript", "scripting"), {"pred_boxes": 1e-4, "scores": 1e-5,
                                                "pred_masks": 1e-5}),
    "onnx": (("onnx", "tracing"), {"pred_boxes": 1e-3, "scores": 1e-4,
                                   "pred_masks > 0.5 (share of pixels differing)": 1e-4}),
}


@functools.cache
def _model(pooler_type: str, mask_head: str = "MaskRCNNFCNHead", options: tuple = ()):
    cfg = load_config(CONFIG, [
        "MODEL.ROI_BOX_HEAD.POOLER_TYPE", pooler_type, "MODEL.ROI_MASK_HEAD.POOLER_TYPE",
        pooler_type, "MODEL.ROI_MASK_HEAD.NAME", mask_head, *options])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # Random weights score low: keep the better half of the sample image's candidates, so that
    # the other image has another number of detections (a trace must not freeze the number).
    predictor = model.roi_heads.box_predictor
    predictor.test_score_thresh = 0.0
    with torch.no_grad():
        found = model.inference([{"image": export.sample_image(cfg)}], do_postprocess=False)[0]
    box_scores = found.box_scores if found.has("box_scores") else found.scores
    predictor.test_score_thresh = float(box_scores.median())
    return model, cfg


def _other_image() -> torch.Tensor:
    """A (3, 224, 352) image: another size than the traced sample (256 x 320)."""
    ((image, _),) = synthetic_images(1, (224, 352), seed=3)
    return torch.from_numpy(image.transpose(2, 0, 1).copy())


def _check(model, cfg, form: str, tmp_path) -> dict[str, float]:
    (fmt, method), tolerances = FORMS[form]
    path = export.export(model, export.sample_image(cfg), tmp_path, fmt, method)
    image = _other_image()
    assert image.shape[1:] != export.sample_image(cfg).shape[1:]
    with torch.no_grad():
        counts = [len(model.inference([{"image": i}], do_postprocess=False)[0])
                  for i in (export.sample_image(cfg), image)]
    assert counts[1] > 0 and counts[1] != counts[0]
    differences = export.compare(model, path, image, method)
    for name, limit in tolerances.items():
        assert differences[name] <= limit, (name, differences)
    assert differences["pred_classes"] == 0
    return differences


# In `make test`: ROIAlignMax in every form (our traced formulation) and ROIAlignV2 in ONNX
# (torchvision's RoiAlign); the other whole-model exports run in `make test-all`, each pooler type
# in every form being tested at the op level in test_roi_ops.py.
_FAST = {("ROIAlignMax", form) for form in FORMS} | {("ROIAlignV2", "onnx")}


@pytest.mark.parametrize(("pooler_type", "form"), [
    pytest.param(pooler_type, form, marks=() if (pooler_type, form) in _FAST else pytest.mark.slow)
    for pooler_type in POOLER_TYPES for form in FORMS])
def test_exported_model_matches_eager(pooler_type, form, tmp_path):
    model, cfg = _model(pooler_type)
    _check(model, cfg, form, tmp_path)


@pytest.mark.parametrize("form", list(FORMS))
def test_exported_mask_scoring_model_matches_eager(form, tmp_path):
    model, cfg = _model("ROIAlignV2", "MaskScoringHead")
    differences = _check(model, cfg, form, tmp_path)
    assert {"pred_mask_iou", "box_scores"} <= differences.keys()
    assert differences["pred_mask_iou"] <= FORMS[form][1]["scores"] * 10


_HEAD_OPTIONS = {
    "fcn-softmax-56-bn": ("MaskRCNNFCNHead", ("MODEL.ROI_MASK_HEAD.LOSS", "softmax",
                                              "MODEL.ROI_MASK_HEAD.OUTPUT_RESOLUTION", 56,
                                              "MODEL.ROI_MASK_HEAD.NORM", "BN")),
    "mlp-class-agnostic": ("MaskRCNNMLPHead", ("MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", True)),
}


# In `make test` one of them, traced; all in `make test-all`.
@pytest.mark.parametrize(("mask_head", "options", "form"), [
    pytest.param(*_HEAD_OPTIONS[name], form, id=f"{name}-{form}",
                 marks=() if (name, form) == ("mlp-class-agnostic", "traced")
                 else pytest.mark.slow)
    for name in _HEAD_OPTIONS for form in ("traced", "scripted")])
def test_exported_mask_head_options_match_eager(mask_head, options, form, tmp_path):
    model, cfg = _model("ROIAlignV2", mask_head, options)
    _check(model, cfg, form, tmp_path)


def test_onnx_export_refuses_scripting_by_name(tmp_path):
    model, cfg = _model("ROIAlignV2")
    with pytest.raises(ValueError, match="ONNX export traces the model; --method scripting"):
        export.export(model, export.sample_image(cfg), tmp_path, "onnx", "scripting")


def test_command_line_writes_the_model_and_prints_the_differences(tmp_path, capsys):
    arguments = ["--config-file", CONFIG, "--format", "torchscript", "--output", str(tmp_path),
                 "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    with pytest.raises(UnusableWeightsError, match="no weights given"):
        export.main(arguments)  # this config has no MODEL.WEIGHTS: random weights are refused
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        differences = export.main(["--skip-weight-checks", *arguments])
    # Generic warnings (TracerWarning, torch.jit's deprecation) would say nothing about this model:
    # the check on a second image of another size does.
    assert [str(w.message) for w in caught
            if issubclass(w.category, (torch.jit.TracerWarning, FutureWarning))] == []
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    names = (tmp_path / "outputs.txt").read_text().split()
    outputs = loaded(export.sample_image(_model("ROIAlignV2")[1]))
    assert len(outputs) == len(names) and names[-1] == "image_size"
    assert outputs[names.index("pred_masks")].shape[1:] == (1, 28, 28)
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'model.ts'}" in printed
    assert ("on the sample image (256 x 320) and a second image of another size (224 x 240)"
            in printed)
    assert differences["pred_boxes"] <= 1e-4 and "pred_boxes:" in printed


_LOAD_SCRIPTED = """
import json, sys
import torch
from mask_rcnn_ext import export

image = torch.load(sys.argv[2])
model = export.load_scripted(sys.argv[1])
found = model.inference([{"image": image}], do_postprocess=False)[0]
print(json.dumps(found.get_fields()["pred_boxes"].tolist()))  # scripted Boxes: their tensor
"""


def test_a_scripted_export_loads_and_runs_in_a_fresh_process(tmp_path):
    """torch.jit.load alone fails there (its ScriptedInstances class is not found);
    export.load_scripted makes it again."""
    import json
    import subprocess
    import sys

    # Not the cached model: Detectron2's scripting changes a model in place, once.
    model, cfg = _model.__wrapped__("ROIAlignV2")
    path = export.export(model, export.sample_image(cfg), tmp_path, "torchscript", "scripting")
    image = _other_image()
    torch.save(image, tmp_path / "image.pt")
    with torch.no_grad():
        eager = model.inference([{"image": image}], do_postprocess=False)[0].pred_boxes.tensor
    result = subprocess.run([sys.executable, "-c", _LOAD_SCRIPTED, str(path),
                             str(tmp_path / "image.pt")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    boxes = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    assert len(boxes) == len(eager) > 0
    torch.testing.assert_close(boxes, eager, atol=1e-4, rtol=0)


def test_a_scripted_export_over_a_traced_one_removes_its_output_names(tmp_path):
    """outputs.txt names a traced model's outputs; left beside the scripted model.ts that
    replaced it, it described a model that was no longer there."""
    model, cfg = _model.__wrapped__("ROIAlignV2")
    image = export.sample_image(cfg)
    export.export(model, image, tmp_path, "torchscript", "tracing")
    assert (tmp_path / "outputs.txt").is_file()
    export.export(model, image, tmp_path, "torchscript", "scripting")
    assert not (tmp_path / "outputs.txt").exists()
