"""The README and docs/: every relative link leads to a file (and heading) that exists, every
script and config that an example names exists, and the examples pair configs with weights they
can load: every command or snippet that uses `make demo`'s weights names `make demo`'s config
(Makefile's DEMO_CONFIG: another config's model has other shapes and refuses them) and reads
images from the set `make demo` writes; export commands write to folders of their own. The Python
snippets and the first export command that uses `make demo`'s weights run as written, in a folder
laid out as after `make demo` (its config's model with random weights, one image of its set)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

from helpers import ROOT
from mask_rcnn_ext import load_config
from mask_rcnn_ext.checkpoint import SafeCheckpointer
from mask_rcnn_ext.data import synthetic

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


def _demo_set() -> str:
    """The data set whose images `make demo` draws (Makefile's DEMO_IMAGES)."""
    return re.search(r"\)/(\w+)/val/", _makefile_value("DEMO_IMAGES")).group(1)


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
    demo_set = _demo_set()
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


@pytest.fixture
def after_make_demo(tmp_path, monkeypatch):
    """A working directory laid out as the repository's after `make demo`, in miniature: the
    configs, make demo's config's model (random weights) at its weights' path, and its set's
    first validation image; the current directory while the test runs."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    demo_config = _makefile_value("DEMO_CONFIG")
    cfg = load_config(str(ROOT / demo_config), ["MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    weights = tmp_path / DEMO_WEIGHTS
    SafeCheckpointer(build_model(cfg), str(weights.parent)).save(weights.stem)
    demo_set = _demo_set()
    synthetic.write_split(tmp_path / "datasets" / demo_set, "val", 1, seed=0,
                          spec=synthetic.SETS[demo_set])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _python_snippets() -> list[pytest.param]:
    return [pytest.param(body, id=f"{path.name}-{number}")
            for path in DOCUMENTS
            for number, (language, body) in enumerate(
                re.findall(r"```(\w*)\n(.*?)```", path.read_text(), re.S))
            if language == "python"]


@pytest.mark.parametrize("snippet", _python_snippets())
def test_python_snippets_run_as_written(snippet, after_make_demo, capsys):
    exec(compile(snippet, "snippet", "exec"), {})
    if "print(" in snippet:
        assert capsys.readouterr().out.strip()


def test_the_export_command_with_the_demo_weights_runs_as_written(after_make_demo):
    """The first export command of the docs that uses make demo's weights, run as written (its
    siblings differ in format only, each exported and checked in test_export.py)."""
    command = next(e for e in _all_examples()
                   if "mask_rcnn_ext.export" in e and DEMO_WEIGHTS in e)
    arguments = shlex.split(command)
    assert arguments[:3] == [".venv/bin/python", "-m", "mask_rcnn_ext.export"], command
    subprocess.run([sys.executable, *arguments[1:]], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    output = Path(arguments[arguments.index("--output") + 1])
    assert (after_make_demo / output / "model.ts").is_file()
