"""The README's examples pair configs with weights they can load and read data that exists: every
command or snippet that uses `make demo`'s weights names `make demo`'s config (Makefile's
DEMO_CONFIG: another config's model has other shapes and refuses them) and reads images from the
set `make demo` writes; export commands write to folders of their own."""

import re

from helpers import ROOT

DEMO_WEIGHTS = "output/demo/model_final.pth"


def _makefile_value(name: str) -> str:
    return re.search(rf"^{name} [?:]?= (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


def _examples(text: str) -> list[str]:
    """Each shell command (continuation lines joined) and each Python snippet (whole) of the
    fenced code blocks of ``text``."""
    examples = []
    for language, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        if language == "python":
            examples.append(body)
        else:
            examples += [line for line in body.replace("\\\n", " ").splitlines()
                         if line.strip() and not line.lstrip().startswith("#")]
    return examples


def test_examples_with_the_demo_weights_use_the_demo_config_and_its_images():
    demo_config = _makefile_value("DEMO_CONFIG")
    demo_set = re.search(r"\)/(\w+)/val/", _makefile_value("DEMO_IMAGES")).group(1)
    using = [e for e in _examples((ROOT / "README.md").read_text()) if DEMO_WEIGHTS in e]
    assert using, "the README no longer shows how to use make demo's weights"
    for example in using:
        configs = re.findall(r"configs/[\w/.-]+\.(?:yaml|py)", example)
        assert configs == [demo_config], example
        for image in re.findall(r"datasets/(\w+)/[\w/.-]+\.png", example):
            assert image == demo_set, example


def test_export_commands_write_to_folders_of_their_own():
    outputs = [re.search(r"--output (\S+)", e).group(1)
               for e in _examples((ROOT / "README.md").read_text())
               if "mask_rcnn_ext.export" in e and "--output" in e]
    assert len(outputs) >= 3 and len(set(outputs)) == len(outputs), outputs
