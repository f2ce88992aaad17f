"""demo.py never writes over an input or an existing file unless asked (--overwrite), and gives
inputs of the same name from different folders drawings of their own."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from helpers import root_script, small_mask_rcnn_cfg
from mask_rcnn_ext.checkpoint import SafeCheckpointer
from mask_rcnn_ext.drawing import visualizer


@pytest.fixture(scope="module")
def demo():
    return root_script("demo")


@pytest.fixture
def config(tmp_path):
    """A small model's config file, with its saved random weights."""
    cfg = small_mask_rcnn_cfg(depth=18)
    torch.manual_seed(0)
    SafeCheckpointer(build_model(cfg), str(tmp_path / "model")).save("model_final")
    cfg.MODEL.WEIGHTS = str(tmp_path / "model" / "model_final.pth")
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    return str(path)


def _images(folder: Path) -> list[Path]:
    """Three inputs, two of them of the same name in different folders and one of the same stem
    in another format."""
    rng = np.random.default_rng(0)
    paths = [folder / "a" / "img.png", folder / "b" / "img.png", folder / "a" / "img.jpg"]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return paths


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_drawings_keep_the_inputs_apart_and_replace_nothing_unasked(demo, config, tmp_path,
                                                                    capsys):
    inputs = _images(tmp_path / "photos")
    output = tmp_path / "vis"
    demo.main(["--config-file", config, "--input", *map(str, inputs), "--output", str(output),
               "--confidence-threshold", "0.0"])
    # The inputs' layout below their common folder; a JPEG's drawing is img.jpg.png.
    assert sorted(_digests(output)) == ["a/img.jpg.png", "a/img.png", "b/img.png"]
    printed = capsys.readouterr().out
    for given, drawn in zip(inputs, ["a/img.png", "b/img.png", "a/img.jpg.png"], strict=True):
        assert f"{given}: " in printed and f"-> {output / drawn}" in printed
        picture = np.asarray(Image.open(output / drawn))
        assert picture.shape == (480, 640, 3)  # the 48 x 64 input, drawn ten times larger

    photos, drawings = _digests(tmp_path / "photos"), _digests(output)

    def refused(*arguments, message):
        with pytest.raises(SystemExit) as exit_info:
            demo.main(["--config-file", config, *arguments, "--confidence-threshold", "0.0"])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
        assert _digests(tmp_path / "photos") == photos and _digests(output) == drawings

    refused("--input", *map(str, inputs), "--output", str(output),
            message=f"3 drawing(s) would replace existing files ({output / 'a' / 'img.png'}, "
                    f"{output / 'b' / 'img.png'}, {output / 'a' / 'img.jpg.png'}): give "
                    "--overwrite to replace them")
    # Into the inputs' own folder: never, even with --overwrite.
    refused("--input", str(inputs[0]), "--output", str(inputs[0].parent), "--overwrite",
            message=f"the drawing of {inputs[0]} would replace the input {inputs[0]}")
    refused("--input", str(inputs[0]), str(inputs[1]), str(inputs[0]), "--output",
            str(tmp_path / "other"), message=f"{inputs[0]} is given twice")

    demo.main(["--config-file", config, "--input", str(inputs[1]), "--output",
               str(output / "b"), "--overwrite", "--confidence-threshold", "0.0"])
    assert _digests(tmp_path / "photos") == photos
    assert sorted(_digests(output)) == sorted(drawings)  # replaced in place, nothing else


def test_inputs_are_drawn_when_the_configs_test_set_is_not_on_disk(demo, tmp_path, capsys):
    """Drawing needs only the test set's class names: a config whose test set is not here (a
    model trained elsewhere) stopped the demo at loading that set."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    cfg = small_mask_rcnn_cfg(depth=18)
    torch.manual_seed(0)
    SafeCheckpointer(build_model(cfg), str(tmp_path / "model")).save("model_final")
    cfg.MODEL.WEIGHTS = str(tmp_path / "model" / "model_final.pth")
    name = "demo_test_set_elsewhere"
    register_coco_instances(name, {}, str(tmp_path / "elsewhere" / "val.json"),
                            str(tmp_path / "elsewhere"))
    cfg.DATASETS.TEST = (name,)
    config = tmp_path / "config.yaml"
    config.write_text(cfg.dump())
    try:
        (image,) = _images(tmp_path / "photos")[:1]
        demo.main(["--config-file", str(config), "--input", str(image), "--output",
                   str(tmp_path / "vis"), "--confidence-threshold", "0.0"])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert (tmp_path / "vis" / "img.png").is_file()
    assert f"{name!r} cannot be read for its class names" in capsys.readouterr().err


@pytest.mark.parametrize("size", [(128, 160), (48, 64), (600, 800)])
def test_small_images_are_drawn_enlarged_with_labels_sized_for_the_drawing(size):
    """A drawing of a small image (the synthetic sets' 128 x 160) is the drawing Detectron2's
    Visualizer makes of the image enlarged to a 480-px short side: the same size, and labels of
    the same font size (its labels of at least 10 px covered small images' objects)."""
    from detectron2.data import MetadataCatalog
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.visualizer import Visualizer

    metadata = MetadataCatalog.get("demo_label_sizes")
    metadata.thing_classes = ["circle", "square"]
    height, width = size
    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    boxes = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.6, 0.05, 0.95, 0.3]]) * torch.tensor(
        [width, height, width, height])

    def drawn(visualizer, image_size, box_scale):
        instances = Instances(image_size, pred_boxes=Boxes(boxes * box_scale),
                              scores=torch.tensor([0.9, 0.8]), pred_classes=torch.tensor([0, 1]))
        output = visualizer.draw_instance_predictions(instances)
        return output.get_image().shape, [text.get_fontsize() for text in output.ax.texts]

    factor = max(1, -(-480 // min(height, width)))
    enlarged = rgb.repeat(factor, axis=0).repeat(factor, axis=1)
    expected = drawn(Visualizer(enlarged, metadata), enlarged.shape[:2], factor)
    assert drawn(visualizer(rgb, metadata), (height, width), 1) == expected
    assert min(expected[0][:2]) >= 480 and expected[1]
