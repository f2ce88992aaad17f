"""The accuracy study (benchmarks/ablation.py): which evaluations a run's metrics.json holds, the
paired intervals and verdicts, the report and plot, and that every variant's configs build."""

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

from benchmarks.ablation import (
    CLAIMS,
    FAMILIES,
    METRICS,
    ROOT,
    VARIANTS,
    _evaluations,
    _pretrained_path,
    _settings,
    paired_difference,
    plot,
    report,
    summarise,
    verdict,
)
from mask_rcnn_ext import load_config
from mask_rcnn_ext.modeling import POOLER_REGISTRY


def test_evaluations_are_read_in_order(tmp_path):
    path = tmp_path / "metrics.json"
    assert _evaluations(path) == []  # not run yet
    records = [{"iteration": 9, "total_loss": 1.0},
               {"iteration": 79, "bbox/AP": 1.0, "segm/AP": 2.0, "segm/AP75": 3.0,
                "boundary/AP": 4.0},
               {"iteration": 99, "bbox/AP": 5.0, "segm/AP": 6.0, "segm/AP75": 7.0,
                "boundary/AP": 8.0}]
    path.write_text("\n".join(map(json.dumps, records)) + "\n")
    assert _evaluations(path) == [
        {"iteration": 79, "segm/AP": 2.0, "segm/AP75": 3.0, "boundary/AP": 4.0, "bbox/AP": 1.0},
        {"iteration": 99, "segm/AP": 6.0, "segm/AP75": 7.0, "boundary/AP": 8.0, "bbox/AP": 5.0}]
    # A model that detects nothing: Detectron2 writes NaN box metrics and no mask metrics.
    path.write_text(json.dumps({"iteration": 10, "bbox/AP": math.nan}) + "\n")
    assert all(math.isnan(value) for key, value in _evaluations(path)[0].items()
               if key != "iteration")


def test_paired_difference_on_a_hand_computed_case():
    # Differences 2, 3, 4: mean 3, standard deviation 1; t(0.975, 2 df) = 4.3027.
    mean, low, high = paired_difference([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])
    assert mean == pytest.approx(3.0)
    assert (low, high) == pytest.approx((3 - 4.3027 / math.sqrt(3), 3 + 4.3027 / math.sqrt(3)),
                                        abs=1e-4)
    assert paired_difference([1.0], [0.0]) == (1.0, -math.inf, math.inf)


@pytest.mark.parametrize(("relation", "low", "high", "expected"), [
    (">", 0.1, 2.0, "holds"), (">", -2.0, -0.1, "reversed"), (">", -0.5, 1.0, "unresolved"),
    ("=", -0.5, 1.0, "consistent"), ("=", 0.2, 1.0, "differs"),
    (">", math.nan, math.nan, "no detections to compare")])
def test_verdicts(relation, low, high, expected):
    assert verdict(relation, low, high) == expected


def _runs(final_aps, early_aps, seconds=60.0):
    return [{"at_80_percent": {key: early for key in METRICS},
             "final": {key: final for key in METRICS}, "seconds": seconds}
            for final, early in zip(final_aps, early_aps, strict=True)]


def test_summary_report_and_plot(tmp_path):
    results = {"stride-32 RoIAlign avg": _runs([30.0, 32.0, 31.0], [29.8, 31.5, 31.0]),
               "stride-32 RoIPool": _runs([25.0, 26.0, 24.0], [25.0, 26.5, 24.0]),
               "RoIAlign avg": _runs([20.0, 21.0, 22.0], [15.0, 16.0, 17.0]),  # still rising
               "RoIAlign max": _runs([20.5, 20.5, 22.5], [20.0, 21.0, 22.0])}
    summary = summarise(results)
    claim = summary["claims"]["stride 32: RoIAlign > RoIPool (Table 2d)"]
    assert claim["verdict"] == "holds"
    assert claim["differences"]["segm/AP"][0] == pytest.approx(6.0)
    assert summary["claims"]["FPN: RoIAlign max = avg"]["verdict"] == "consistent"
    assert set(summary["claims"]) == {"stride 32: RoIAlign > RoIPool (Table 2d)",
                                      "FPN: RoIAlign max = avg"}  # the others were not run
    assert summary["variants"]["stride-32 RoIPool"]["converged"]
    assert not summary["variants"]["RoIAlign avg"]["converged"]
    lines = report(summary, ["# header"])
    row = next(line for line in lines if line.startswith("| RoIAlign avg |"))
    assert "+5.0 (not converged)" in row and "21.0 ± " in row
    assert any(line.startswith("| stride 32: RoIAlign > RoIPool (Table 2d) | +6.0 [") and
               line.endswith("| holds |") for line in lines)
    plot(summary, tmp_path / "study.png")
    assert (tmp_path / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_claim_compares_variants_of_one_family():
    for a, relation, b in CLAIMS.values():
        assert VARIANTS[a].family == VARIANTS[b].family and relation in (">", "=")


@pytest.mark.parametrize("coco", [False, True], ids=["synthetic", "coco"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_builds_what_it_says(variant, coco, tmp_path):
    """Its config and overrides (and the schedule) load, and the model has the variant's pooler
    type in every branch; built on the meta device (the structure is what is checked)."""
    args = argparse.Namespace(coco=coco, iterations=None, output=tmp_path / "study")
    config, overrides = _settings(variant, 0, args, tmp_path)
    cfg = load_config(config, overrides)
    assert Path(cfg.OUTPUT_DIR) == tmp_path and cfg.SEED == 0
    if not coco:  # every synthetic run starts from the study's one pretrained ResNet
        assert Path(cfg.MODEL.WEIGHTS) == _pretrained_path(args)
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    heads = model.roi_heads
    poolers = ([heads.pooler] if hasattr(heads, "pooler")
               else [heads.box_pooler, heads.mask_pooler])
    expected = dict(zip(VARIANTS[variant].overrides[::2], VARIANTS[variant].overrides[1::2],
                        strict=True)).get("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlignV2")
    for pooler in poolers:
        level = pooler.level_poolers[0]
        reference = POOLER_REGISTRY.get(expected)(pooler.output_size, 1.0, 0)
        assert type(level) is type(reference)
        for attribute in ("mode", "aligned"):
            assert getattr(level, attribute, None) == getattr(reference, attribute, None)
    # Evaluated at 80% and at the end: the convergence check needs both.
    assert cfg.TEST.EVAL_PERIOD == int(0.8 * cfg.SOLVER.MAX_ITER)


def test_iterations_replace_the_schedule_keeping_its_shape(tmp_path):
    args = argparse.Namespace(coco=False, iterations=100, output=tmp_path)
    cfg = load_config(*_settings("RoIPool", 1, args, tmp_path))
    own = load_config(str(ROOT / FAMILIES["FPN"].synthetic_config))
    assert cfg.SOLVER.MAX_ITER == 100 and cfg.TEST.EVAL_PERIOD == 80
    # The LR drops where the configs put them: the last 20% runs at a low rate.
    assert [step / 100 for step in cfg.SOLVER.STEPS] == pytest.approx(
        [step / own.SOLVER.MAX_ITER for step in own.SOLVER.STEPS], abs=0.005)
