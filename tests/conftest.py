"""Shared fixtures: a tiny synthetic COCO-format data set written to disk and registered."""

import uuid

import pytest

from mask_rcnn_ext.data import synthetic


@pytest.fixture
def tiny_coco_dataset(tmp_path):
    """The name of a registered 4-image synthetic COCO-format set (removed again afterwards);
    its images are ``tmp_path / "train" / "00000{0..3}.png"``."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    json_path = synthetic.write_split(tmp_path, "train", 4, seed=0)
    name = f"tiny_coco_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(json_path), str(tmp_path / "train"))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
