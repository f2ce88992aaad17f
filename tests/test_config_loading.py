"""Bad config input gets a clear error naming the file, key or option; unsafe YAML is refused."""

from pathlib import Path

import pytest

from mask_rcnn_ext import load_config

CONFIG = Path(__file__).parent.parent / "configs" / "Synthetic" / "mask_rcnn_R_18_FPN_cpu.yaml"


def test_a_good_config_and_options_load():
    cfg = load_config(str(CONFIG), ["SOLVER.MAX_ITER", "7"])
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.ROI_HEADS.NAME == "MaskRCNNExtROIHeads"


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty\.yaml is empty"):
        load_config(str(empty))


def test_unknown_keys_name_the_key_and_the_missing_add_config(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("MODEL:\n  POINT_HEAD:\n    NUM_CLASSES: 3\n")
    with pytest.raises(KeyError, match=r"typo\.yaml.*MODEL\.POINT_HEAD.*add_\*_config"):
        load_config(str(config))
    with pytest.raises(KeyError, match=r"command-line option.*SOLVER\.MAX_ITERS.*add_\*_config"):
        load_config(str(CONFIG), ["SOLVER.MAX_ITERS", "3"])
    with pytest.raises(ValueError, match=r"command-line option.*odd length"):
        load_config(str(CONFIG), ["SOLVER.MAX_ITER"])


def test_yaml_that_constructs_python_objects_is_refused(tmp_path):
    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(
        f"_BASE_: {CONFIG}\n"
        f"OUTPUT_DIR: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    # The same file really does run code under yaml's unsafe loader, which Detectron2 falls back
    # to by default...
    import yaml

    yaml.unsafe_load(config.read_text())
    assert marker.exists()
    marker.unlink()
    # ...but load_config refuses it and runs nothing.
    with pytest.raises(ValueError, match=r"refusing to load .*evil\.yaml.*construct"):
        load_config(str(config))
    assert not marker.exists()


def test_base_cycles_and_missing_bases_name_the_files(tmp_path):
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\nSOLVER:\n  MAX_ITER: 3\n")
    (tmp_path / "b.yaml").write_text("_BASE_: [./a.yaml]\n")  # the same file, spelt otherwise
    with pytest.raises(ValueError, match=r"config files include each other through _BASE_: "
                                         r".*a\.yaml -> .*b\.yaml -> .*a\.yaml$"):
        load_config(str(tmp_path / "a.yaml"))

    (tmp_path / "child.yaml").write_text("_BASE_: parent.yaml\n")
    (tmp_path / "parent.yaml").write_text("_BASE_: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"config file .*gone\.yaml, the _BASE_ of "
                                                r".*parent\.yaml, does not exist \(included by "
                                                r".*child\.yaml\)"):
        load_config(str(tmp_path / "child.yaml"))


@pytest.mark.parametrize("key, value", [("SOLVER.MAX_ITER", "-5"), ("SOLVER.MAX_ITER", "0"),
                                        ("MODEL.ROI_HEADS.NUM_CLASSES", "0"),
                                        ("SOLVER.IMS_PER_BATCH", "-2")])
def test_counts_that_are_not_positive_integers_name_the_key(key, value, tmp_path):
    with pytest.raises(ValueError, match=rf"{key} must be a positive integer, got {value}"):
        load_config(str(CONFIG), [key, value])
    config = tmp_path / "bad.yaml"
    section, *rest = key.split(".")
    nested = "".join(f"\n{'  ' * (depth + 1)}{part}:" for depth, part in enumerate(rest[:-1]))
    config.write_text(f"_BASE_: {CONFIG}\n{section}:{nested}\n{'  ' * len(rest)}{rest[-1]}: "
                      f"{value}\n")
    with pytest.raises(ValueError, match=rf"{key} must be a positive integer.*bad\.yaml"):
        load_config(str(config))
