"""mask_rcnn_ext.data.synthetic: a deterministic data set with exact, hole-free visible masks; the
builtin registration of synthetic_train / synthetic_val; the evaluation problems."""

import itertools
import json

import numpy as np
import pytest
import shapely
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from shapely.geometry import Polygon

from mask_rcnn_ext.data import register_synthetic, synthetic
from support.evaluation import evaluation_problem


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_root") / "synthetic"
    synthetic.main(["--root", str(root), "--train", "12", "--val", "4", "--seed", "3"])
    return root


def _polygons(annotation):
    return [Polygon(np.array(part).reshape(-1, 2)) for part in annotation["segmentation"]]


def test_same_seed_same_files(synthetic_root, tmp_path):
    again = tmp_path / "synthetic"
    synthetic.main(["--root", str(again), "--train", "12", "--val", "4", "--seed", "3"])
    for relative in ("annotations/instances_train.json", "train/000005.png", "val/000003.png"):
        assert (again / relative).read_bytes() == (synthetic_root / relative).read_bytes()


def test_annotations_are_exact_visible_regions(synthetic_root):
    data = json.loads((synthetic_root / "annotations" / "instances_train.json").read_text())
    assert {c["name"] for c in data["categories"]} == set(synthetic.CATEGORIES)
    by_image = {}
    for annotation in data["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
        parts = _polygons(annotation)
        assert all(part.is_valid and not part.interiors for part in parts)
        visible = shapely.union_all(parts)
        assert annotation["area"] == pytest.approx(visible.area, rel=1e-9)
        x1, y1, x2, y2 = visible.bounds
        assert annotation["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-9)
    for annotations in by_image.values():
        # Visible regions never overlap: occluded parts belong to the object on top.
        for a, b in itertools.combinations(annotations, 2):
            overlap = shapely.union_all(_polygons(a)).intersection(shapely.union_all(_polygons(b)))
            assert overlap.area < 0.5
    assert len(data["images"]) == 12 and len(data["annotations"]) >= 24


def test_the_pixels_show_the_annotated_objects(synthetic_root):
    """Inside a visible region, away from its border, the image has the object's one flat colour
    (the background is noisy, so any leak of background or another object would show)."""
    data = json.loads((synthetic_root / "annotations" / "instances_train.json").read_text())
    checked = 0
    for annotation in data["annotations"]:
        core = shapely.union_all(_polygons(annotation)).buffer(-3)
        if core.area < 20:
            continue
        name = f"{annotation['image_id'] - 1:06d}.png"
        image = np.asarray(Image.open(synthetic_root / "train" / name))
        x1, y1, x2, y2 = core.bounds
        grid = [(x, y) for x in np.linspace(x1, x2, 7) for y in np.linspace(y1, y2, 7)]
        inside = [(x, y) for x, y in grid if core.contains(shapely.Point(x, y))]
        colours = {tuple(image[int(y), int(x)]) for x, y in inside}
        assert len(colours) == 1, (annotation["id"], colours)
        checked += 1
    assert checked > 10


def test_builtin_names_read_the_generated_files(synthetic_root, monkeypatch):
    register_synthetic(synthetic_root.parent)
    try:
        dicts = DatasetCatalog.get("synthetic_val")
        assert len(dicts) == 4 and all(d["annotations"] for d in dicts)
        assert MetadataCatalog.get("synthetic_val").thing_classes == list(
            synthetic.CATEGORIES)
    finally:
        register_synthetic()  # back to $DETECTRON2_DATASETS


def test_the_small_set_has_its_own_size_and_builtin_names(tmp_path):
    """--set synthetic_small: images of its size under <root>/synthetic_small, read by
    synthetic_small_{train,val}; the default set's names stay apart."""
    spec = synthetic.SETS["synthetic_small"]
    synthetic.main(["--set", "synthetic_small", "--root", str(tmp_path / "synthetic_small"),
                    "--train", "3", "--val", "2"])
    register_synthetic(tmp_path)
    try:
        dicts = DatasetCatalog.get("synthetic_small_val")
        assert len(dicts) == 2
        for record in dicts:
            assert (record["height"], record["width"]) == spec.image_size
            assert Image.open(record["file_name"]).size == spec.image_size[::-1]
        with pytest.raises(FileNotFoundError, match=r"--set synthetic\b"):
            DatasetCatalog.get("synthetic_val")
    finally:
        register_synthetic()


def test_missing_files_are_named(tmp_path):
    register_synthetic(tmp_path)
    try:
        with pytest.raises(FileNotFoundError, match=r"prepare_synthetic\.py") as error:
            DatasetCatalog.get("synthetic_train")
        assert "make demo" not in str(error.value)  # it writes synthetic_small only
        with pytest.raises(FileNotFoundError, match=r"--set synthetic_small`; `make demo`"):
            DatasetCatalog.get("synthetic_small_train")
    finally:
        register_synthetic()


def test_register_coco_format_names_missing_paths_and_loads(synthetic_root, tmp_path):
    from mask_rcnn_ext.data import register_coco_format

    json_file = str(synthetic_root / "annotations" / "instances_val.json")
    with pytest.raises(FileNotFoundError, match=r"'mine'.*annotation file .*nope\.json"):
        register_coco_format("mine", str(tmp_path / "nope.json"), str(synthetic_root / "val"))
    with pytest.raises(FileNotFoundError, match=r"'mine'.*image folder .*pictures"):
        register_coco_format("mine", json_file, str(tmp_path / "pictures"))
    register_coco_format("mine", json_file, str(synthetic_root / "val"))
    try:
        assert len(DatasetCatalog.get("mine")) == 4
        assert MetadataCatalog.get("mine").evaluator_type == "coco"
    finally:
        DatasetCatalog.remove("mine")
        MetadataCatalog.remove("mine")


def test_module_and_script_write_the_same_set(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repository = Path(__file__).parents[1]
    for folder, command in (("module", ["-m", "mask_rcnn_ext.data.synthetic"]),
                            ("script", [str(repository / "datasets" / "prepare_synthetic.py")])):
        subprocess.run([sys.executable, *command, "--root", str(tmp_path / folder), "--train",
                        "2", "--val", "1"], check=True, capture_output=True)
    for relative in ("annotations/instances_train.json", "annotations/instances_val.json",
                     "train/000001.png", "val/000000.png"):
        assert (tmp_path / "module" / relative).read_bytes() == \
            (tmp_path / "script" / relative).read_bytes(), relative


def test_evaluation_problems_are_reproducible_and_consistent():
    first = evaluation_problem(20, seed=4, detections_per_image=7)
    assert first == evaluation_problem(20, seed=4, detections_per_image=7)
    ground_truth, detections = first
    assert ground_truth != evaluation_problem(20, seed=5)[0]
    per_image = {image["id"]: 0 for image in ground_truth["images"]}
    for detection in detections:
        per_image[detection["image_id"]] += 1
    assert set(per_image.values()) == {7}
    assert any(a["iscrowd"] for a in ground_truth["annotations"])
    for item in ground_truth["annotations"] + detections:
        points = np.reshape(item["segmentation"][0], (-1, 2))
        x, y, w, h = item["bbox"]
        np.testing.assert_allclose([x, y, x + w, y + h], [*points.min(0), *points.max(0)])
        assert (points >= 0).all() and (points <= [119, 99]).all()
    for annotation in ground_truth["annotations"]:
        area = Polygon(np.reshape(annotation["segmentation"][0], (-1, 2))).area
        assert annotation["area"] == pytest.approx(area)


_USER_SESSION = """
import os, sys
import mask_rcnn_ext
from detectron2.data import DatasetCatalog, MetadataCatalog
print("classes", MetadataCatalog.get("synthetic_val").thing_classes)  # before any loading
print("default", len(DatasetCatalog.get("synthetic_val")))
os.environ["DETECTRON2_DATASETS"] = sys.argv[1]  # set after the import, as in a notebook
print("moved", len(DatasetCatalog.get("synthetic_train")), len(DatasetCatalog.get("synthetic_val")))
print("json", MetadataCatalog.get("synthetic_val").json_file)
"""


def test_generator_and_registration_share_one_location_resolved_when_loading(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repository = Path(__file__).parents[1]
    work = tmp_path / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "DETECTRON2_DATASETS"}
    env["PYTHONWARNINGS"] = "ignore"
    # Written with their defaults: where the builtin names read without DETECTRON2_DATASETS.
    subprocess.run([sys.executable, str(repository / "datasets" / "prepare_synthetic.py"),
                    "--train", "1", "--val", "2"], cwd=work, env=env, check=True,
                   capture_output=True)
    assert (work / "datasets" / "synthetic" / "annotations" / "instances_val.json").is_file()
    elsewhere = tmp_path / "elsewhere"
    subprocess.run([sys.executable, "-m", "mask_rcnn_ext.data.synthetic", "--train", "3",
                    "--val", "1"], cwd=work, env=dict(env, DETECTRON2_DATASETS=str(elsewhere)),
                   check=True, capture_output=True)
    result = subprocess.run([sys.executable, "-c", _USER_SESSION, str(elsewhere)], cwd=work,
                            env=dict(env, PYTHONPATH=str(repository)), check=True,
                            capture_output=True, text=True)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["classes"] == str(list(synthetic.CATEGORIES))
    assert lines["default"] == "2"
    assert lines["moved"] == "3 1"
    assert lines["json"] == str(elsewhere / "synthetic" / "annotations" / "instances_val.json")


def test_if_missing_writes_once_and_refuses_partial_or_other_sets(tmp_path, capsys):
    """`make demo` used to check only instances_val.json: a notebook's 16 + 8-image preview of the
    set, or another set in its folder, was then trained on as if it were the full set."""
    root = tmp_path / "synthetic_small"
    arguments = ["--set", "synthetic_small", "--root", str(root), "--train", "4", "--val", "2",
                 "--if-missing"]
    synthetic.main(arguments)
    written = {path: path.stat().st_mtime_ns for path in root.rglob("*")}
    synthetic.main(arguments)
    assert "holds the complete set (4 + 2 images)" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in root.rglob("*")} == written

    def refused(arguments):
        with pytest.raises(SystemExit) as stop:
            synthetic.main(arguments)
        assert stop.value.code == 2
        return capsys.readouterr().err

    # Fewer images than the set has (a preview):
    assert "instances_train.json lists 4 images, not 5" in refused(
        [*arguments[:4], "--train", "5", "--val", "2", "--if-missing"])
    # An image gone:
    (root / "val" / "000001.png").unlink()
    assert "1 images that" in refused(arguments)
    # Another data set in its place:
    other = tmp_path / "other"
    (other / "annotations").mkdir(parents=True)
    (other / "annotations" / "instances_train.json").write_text(json.dumps(
        {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}))
    message = refused(["--set", "synthetic_small", "--root", str(other), "--if-missing"])
    assert "categories ['person']" in message and "DETECTRON2_DATASETS" in message
    assert not (other / "train").exists()
