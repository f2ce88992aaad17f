"""The README and docs/: every relative link leads to a file (and heading) that exists, every
script and config that an example names exists, and the examples pair configs with weights they
can load: every command or snippet that uses `make demo`'s weights names `make demo`'s config
(Makefile's DEMO_CONFIG: another config's model has other shapes and refuses them) and reads
images from the set `make demo` writes; export commands write to folders of their own."""

import re

from helpers import ROOT

DEMO_WEIGHTS = "output/demo/model_final.pth"
DOCUMENTS = [ROOT / "README.md", ROOT / "datasets" / "README.md",
             *sorted((ROOT / "docs").glob("*.md"))]


def _all_examples() -> list[str]:
    return [e for path in DOCUMENTS for e in _examples(path.read_text())]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


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
    using = [e for e in _all_examples() if DEMO_WEIGHTS in e]
    assert using, "the README no longer shows how to use make demo's weights"
    for example in using:
        configs = re.findall(r"configs/[\w/.-]+\.(?:yaml|py)", example)
        assert configs == [demo_config], example
        for image in re.findall(r"datasets/(\w+)/[\w/.-]+\.png", example):
            assert image == demo_set, example


def test_export_commands_write_to_folders_of_their_own():
    outputs = [re.search(r"--output (\S+)", e).group(1)
               for e in _all_examples() if "mask_rcnn_ext.export" in e and "--output" in e]
    assert len(outputs) >= 3 and len(set(outputs)) == len(outputs), outputs


def test_every_relative_link_leads_to_an_existing_file_and_heading():
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            file_part, _, anchor = target.partition("#")
            path = (document.parent / file_part).resolve() if file_part else document
            assert path.exists(), f"{document.relative_to(ROOT)}: {target}"
            if anchor and path.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
                assert anchor in {_anchor(h) for h in headings}, \
                    f"{document.relative_to(ROOT)}: {target}"


def test_every_script_and_config_an_example_names_exists():
    for example in _all_examples():
        for path in re.findall(r"(?<![\w/.])((?:configs|datasets|benchmarks|examples)/[\w/.-]+"
                               r"\.(?:yaml|py|ipynb|sh)|[\w]+\.py)\b", example):
            if path.endswith(".py") and "/" not in path and path not in ("train_net.py",
                                                                        "demo.py"):
                continue  # a Python file of the reader's own
            assert (ROOT / path).exists(), f"{path} in: {example.strip()[:200]}"
        for module in re.findall(r"python -m ((?:mask_rcnn_ext|benchmarks|detectron2_compat)"
                                 r"[\w.]*)", example):
            assert (ROOT / (module.replace(".", "/") + ".py")).exists() or \
                (ROOT / module.replace(".", "/") / "__main__.py").exists(), \
                f"python -m {module} in: {example.strip()[:200]}"
