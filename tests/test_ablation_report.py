"""The ablation study's report: which evaluation a run's metrics.json holds, and the verdicts on
the paper's orderings and the options' gains (benchmarks/ablation.py)."""

import json
import math

from benchmarks.ablation import _comparisons, _final_metrics


def test_final_metrics_take_the_last_evaluation(tmp_path):
    path = tmp_path / "metrics.json"
    assert _final_metrics(path) is None  # not run yet
    path.write_text(json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n")
    assert _final_metrics(path) is None  # trained, not evaluated
    records = [{"iteration": 9, "total_loss": 1.0},
               {"iteration": 10, "bbox/AP": 1.0, "segm/AP": 2.0, "segm/AP50": 3.0,
                "segm/AP75": 4.0},
               {"iteration": 20, "bbox/AP": 5.0, "segm/AP": 6.0, "segm/AP50": 7.0,
                "segm/AP75": 8.0}]
    path.write_text("\n".join(map(json.dumps, records)) + "\n")
    assert _final_metrics(path) == {"bbox/AP": 5.0, "segm/AP": 6.0, "segm/AP50": 7.0,
                                    "segm/AP75": 8.0}
    # A model that detects nothing: Detectron2 writes NaN box metrics and no mask metrics.
    path.write_text(json.dumps({"iteration": 10, "bbox/AP": math.nan}) + "\n")
    assert all(math.isnan(value) for value in _final_metrics(path).values())


def _runs(*mask_aps):
    return [{"bbox/AP": 0.0, "segm/AP": ap, "segm/AP50": 0.0, "segm/AP75": 0.0}
            for ap in mask_aps]


def test_ordering_verdicts_weigh_differences_against_the_seed_spread():
    results = {"RoIAlign avg (ours)": _runs(20.0, 22.0),   # mean 21, std 1.41
               "RoIPool": _runs(15.0, 16.0),                # 5.5 lower: holds
               "softmax mask loss": _runs(20.0, 21.0),      # 0.5 lower: within noise
               "MLP mask head": _runs(25.0, 27.0),          # 5 higher: reversed
               "mask scoring": _runs(23.0, 24.0)}           # adds 2.5: holds
    rows = {line.split(" | ")[0].strip("| "): line for line in _comparisons(results)[2:]}
    assert rows["RoIAlign > RoIPool"].endswith("| holds |") and "+5.5" in rows[
        "RoIAlign > RoIPool"]
    assert rows["sigmoid > softmax"].endswith("| within noise |")
    assert rows["FCN > MLP"].endswith("| reversed |") and "-5.0" in rows["FCN > MLP"]
    assert rows["mask scoring on > off"].endswith("| holds |") and "+2.5" in rows[
        "mask scoring on > off"]
    assert "RoIAlign > RoIWarp" not in rows  # not run
    assert _comparisons({"RoIWarp": _runs(1.0, 2.0)}) == []  # nothing to compare it with
