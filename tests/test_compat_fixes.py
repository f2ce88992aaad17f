"""The Detectron2 in use works on today's stack where v0.6 did not (one test per named fix), and
the fixes refuse sources they were not written for."""

import importlib.metadata
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import detectron2
import numpy as np
import pytest
import torch
from detectron2 import _C
from PIL import Image

from detectron2_compat.fixes import FIXES, FIXES_DIGEST, apply_fixes

COMPAT = getattr(_C, "IS_COMPAT_LAYER", False)
compat_only = pytest.mark.skipif(not COMPAT, reason="a compiled Detectron2 is in use")


def test_fix_names_are_unique_and_explained():
    assert len({fix.name for fix in FIXES}) == len(FIXES)
    assert all(fix.why and fix.edits for fix in FIXES)


def test_apply_fixes_refuses_unexpected_sources(tmp_path):
    first = FIXES[0].edits[0]
    (tmp_path / first.path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / first.path).write_text("# not the pinned setup.py\n")
    with pytest.raises(RuntimeError, match=rf"fix '{FIXES[0].name}'.*setup.py.*found 0"):
        apply_fixes(tmp_path)


@compat_only
def test_installed_build_is_the_current_fixes():
    version = importlib.metadata.version("pb1-detectron2")
    assert version == f"0.6+maskrcnnext.{FIXES_DIGEST}"
    requirements = importlib.metadata.requires("pb1-detectron2") or []
    assert not any(r.startswith("black") for r in requirements)  # fix drop-black-pin
    assert Path(_C.__file__).suffix == ".py"  # fix setup-without-csrc


def test_extent_transform_resamples_bilinearly():
    """pillow-10-bilinear: the default interpolation of ExtentTransform is bilinear."""
    from detectron2.data.transforms import ExtentTransform

    image = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    transform = ExtentTransform(src_rect=(2.5, 3.5, 25.0, 17.0), output_size=(9, 11))
    expected = Image.fromarray(image).transform(
        (11, 9), Image.EXTENT, data=(2.5, 3.5, 25.0, 17.0), resample=Image.BILINEAR, fill=0)
    np.testing.assert_array_equal(transform.apply_image(image), np.asarray(expected))


def test_model_zoo_lookup_reports_missing_configs_clearly():
    from detectron2.model_zoo import get_config_file

    name = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
    configs = Path(detectron2.__file__).parent / "model_zoo" / "configs"
    if configs.is_dir():
        assert Path(get_config_file(name)).is_file()
    else:  # the registry sdist ships no model-zoo configs
        with pytest.raises(RuntimeError, match="not available in Model Zoo"):
            get_config_file(name)


@compat_only
def test_model_zoo_works_without_pkg_resources():
    """setuptools-81-importlib-resources: as if setuptools >= 81 were installed."""
    code = (
        "import sys; sys.modules['pkg_resources'] = None\n"
        "from detectron2.model_zoo import get_config_file\n"
        "try:\n"
        "    get_config_file('COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml')\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "not available in Model Zoo" in result.stdout


def test_class_histogram_counts_with_numpy_2(caplog):
    """numpy-2-removed-aliases: the training loader's class histogram (np.int)."""
    from detectron2.data.build import print_instances_class_histogram

    categories = [0, 2, 2, 1, 2, 0]
    dicts = [{"annotations": [{"category_id": c, "iscrowd": 0} for c in categories[:4]]},
             {"annotations": [{"category_id": c, "iscrowd": 0} for c in categories[4:]]
              + [{"category_id": 1, "iscrowd": 1}]}]
    with caplog.at_level(logging.INFO, logger="detectron2"):
        print_instances_class_histogram(dicts, ["cat", "dog", "emu"])
    cells = [cell.strip() for line in caplog.text.splitlines() if line.startswith("|")
             for cell in line.strip("|").split("|")]
    table = dict(zip(cells[0::2], cells[1::2], strict=True))
    counts = Counter(categories)  # the crowd instance is not counted
    assert {name: int(table[name]) for name in ("cat", "dog", "emu")} == {
        "cat": counts[0], "dog": counts[1], "emu": counts[2]}
    assert int(table["total"]) == len(categories)


def test_sem_seg_evaluator_on_a_hand_computed_case(tmp_path):
    """numpy-2-removed-aliases: SemSegEvaluator (np.int, np.float)."""
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import SemSegEvaluator

    ground_truth = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 255]], dtype=np.uint8)
    Image.fromarray(ground_truth).save(tmp_path / "gt.png")
    name = "mask_rcnn_ext_test_semseg"
    DatasetCatalog.register(name, lambda: [{"file_name": "x.png",
                                            "sem_seg_file_name": str(tmp_path / "gt.png")}])
    MetadataCatalog.get(name).set(stuff_classes=["a", "b"], ignore_label=255)
    try:
        evaluator = SemSegEvaluator(name, distributed=False)
        evaluator.reset()
        predicted = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]])
        logits = torch.from_numpy(np.stack([predicted == 0, predicted == 1]).astype(np.float32))
        evaluator.process([{"file_name": "x.png"}], [{"sem_seg": logits}])
        result = evaluator.evaluate()["sem_seg"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    # Class a: 6 true pixels, 5 hit, 1 false alarm -> IoU 5/7; class b: 5 true, 4 hit, 1 false
    # alarm -> IoU 4/6; the 255 pixel is ignored.
    assert result["mIoU"] == pytest.approx(100 * (5 / 7 + 4 / 6) / 2)
    assert result["pACC"] == pytest.approx(100 * 9 / 11)


def test_pascal_voc_loader(tmp_path):
    """numpy-2-removed-aliases: the Pascal VOC loader (np.str)."""
    from detectron2.data.datasets.pascal_voc import load_voc_instances

    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("000001\n000002\n")
    for file_id, label in (("000001", "dog"), ("000002", "cat")):
        (tmp_path / "Annotations" / f"{file_id}.xml").write_text(
            f"<annotation><size><width>40</width><height>30</height></size><object>"
            f"<name>{label}</name><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>20</xmax>"
            f"<ymax>25</ymax></bndbox></object></annotation>")
    dicts = load_voc_instances(str(tmp_path), "val", ["cat", "dog"])
    assert [d["image_id"] for d in dicts] == ["000001", "000002"]
    assert [d["annotations"][0]["category_id"] for d in dicts] == [1, 0]
    # VOC boxes are 1-based and inclusive; Detectron2 moves them to 0-based pixel edges.
    assert dicts[0]["annotations"][0]["bbox"] == [4.0, 5.0, 20.0, 25.0]


def test_collect_env_reports_the_build():
    """Detectron2's environment report runs with the compat module in place."""
    code = "from detectron2.utils.collect_env import collect_env_info; print(collect_env_info())"
    report = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert "detectron2" in report
    if COMPAT:
        assert "mask_rcnn_ext compatibility layer" in report


def test_map_dataset_draws_another_item_when_the_mapper_skips_one():
    """python-3.11-sample-from-set: a mapper returning None makes MapDataset try another item."""
    from detectron2.data.common import MapDataset

    dataset = MapDataset(list(range(6)), lambda item: None if item % 2 else item)
    drawn = [dataset[index] for index in range(6)]
    assert drawn[0::2] == [0, 2, 4] and all(item in (0, 2, 4) for item in drawn[1::2])


def _report_ranks(folder):
    import os

    import torch.distributed as dist
    from detectron2.utils import comm

    ranks = comm.all_gather(comm.get_rank())
    (folder / f"rank{comm.get_rank()}.txt").write_text(
        f"{dist.get_backend()} {comm.get_local_rank()} {comm.get_local_size()} {ranks}")
    # The worker ends here, without the interpreter's exit: there, gloo's threads sometimes
    # abort the process ("terminate called without an active exception", about 1 run in 15,
    # also after destroy_process_group), which is not what this test is about.
    dist.destroy_process_group()
    os._exit(0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="without a GPU only: with one it is NCCL")
def test_launch_runs_cpu_processes_over_gloo(tmp_path):
    """launch-on-cpu-with-gloo: Detectron2's own launch starts 2 CPU processes that talk."""
    from detectron2.engine import launch

    launch(_report_ranks, 2, dist_url="auto", args=(tmp_path,))
    reports = sorted(path.read_text() for path in tmp_path.glob("rank*.txt"))
    assert reports == ["gloo 0 2 [0, 1]", "gloo 1 2 [0, 1]"]


def test_export_imports_without_caffe2_and_its_caffe2_names_say_so():
    """export-without-caffe2: TracingAdapter and scripting_with_instances import; the Caffe2
    exporter's names raise an error naming themselves and the alternatives."""
    import detectron2.export as export

    assert callable(export.TracingAdapter) and callable(export.scripting_with_instances)
    with pytest.raises(ImportError, match=r"detectron2\.export\.Caffe2Tracer exports to Caffe2.*"
                                          r"TracingAdapter"):
        export.Caffe2Tracer(None, None, None)
    with pytest.raises(ImportError, match=r"export_caffe2_model"):
        export.export_caffe2_model(None, None, None)


def test_trainer_checkpoints_restore_the_optimizer(tiny_coco_dataset, tmp_path):
    from detectron2.engine import DefaultTrainer

    from helpers import small_mask_rcnn_cfg

    cfg = small_mask_rcnn_cfg(tiny_coco_dataset, tmp_path, depth=18)  # 2 iterations, period 1
    cfg.SOLVER.MOMENTUM = 0.9
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    momentum = {key: value["momentum_buffer"]
                for key, value in trainer.optimizer.state_dict()["state"].items()}
    assert momentum

    resumed = DefaultTrainer(cfg)
    resumed.resume_or_load(resume=True)
    restored = resumed.optimizer.state_dict()["state"]
    assert restored.keys() == momentum.keys()  # v0.6: empty, momentum restarted from zero
    for key, buffer in momentum.items():
        torch.testing.assert_close(restored[key]["momentum_buffer"], buffer, rtol=0, atol=0)


def test_anchors_are_made_without_a_meshgrid_warning():
    """Every image's anchors warned about torch.meshgrid's indexing; the anchors are still those
    of 'ij' indexing: cells row by row (x fastest), cell (i, j) shifted by (4 j, 4 i)."""
    import warnings

    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

    generator = DefaultAnchorGenerator(sizes=[[8.0]], aspect_ratios=[[1.0]], strides=[4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (anchors,) = generator([torch.zeros(1, 1, 3, 5)])
    grid = anchors.tensor.view(3, 5, 4)
    rows, columns = torch.meshgrid(torch.arange(3.0), torch.arange(5.0), indexing="ij")
    shift = torch.stack((columns, rows, columns, rows), dim=2) * 4
    torch.testing.assert_close(grid - grid[0, 0], shift)
