"""Shared fixtures: a tiny synthetic COCO-format data set written to disk and registered; the
Triton kernels run by Triton's interpreter."""

import importlib.util
import uuid
from pathlib import Path

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


@pytest.fixture(scope="session")
def _interpreted_kernels():
    """A private copy of :mod:`mask_rcnn_ext.layers.triton_roi_pool` loaded with
    ``TRITON_INTERPRET=1``: the interpreter is chosen when a kernel is decorated (and read again
    when it calls its helpers), so the package's own import is left alone, and the variable is
    set only while a test runs one (:func:`triton_kernels`)."""
    from mask_rcnn_ext import layers

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        spec = importlib.util.spec_from_file_location(
            "mask_rcnn_ext.layers._triton_roi_pool_interpreted",
            Path(layers.__file__).parent / "triton_roi_pool.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


@pytest.fixture
def triton_kernels(_interpreted_kernels, monkeypatch):
    """The Triton kernels' module, run by the interpreter on CPU tensors; the dispatch table's
    Triton implementations call it too (``backends.triton_ops``) while the test runs."""
    from mask_rcnn_ext.layers import backends

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(backends, "triton_ops", lambda: _interpreted_kernels)
    return _interpreted_kernels
