"""The named source fixes applied to the registry's Detectron2 v0.6 sdist before it is installed.

Each fix says why it is needed and edits exact text; an edit whose text is not found the expected
number of times stops the build, so a different sdist can never be patched silently. The sdist
itself is pinned by its sha256.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COMPILED_MODULE_SHIM", "FIXES", "FIXES_DIGEST", "SDIST", "Edit", "Fix", "apply_fixes"]


@dataclass(frozen=True)
class Sdist:
    requirement: str
    sha256: str


SDIST = Sdist(
    requirement="pb1-detectron2==0.6",
    sha256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29",
)


@dataclass(frozen=True)
class Edit:
    path: str  # relative to the unpacked sdist's root
    old: str
    new: str
    count: int = 1  # how often ``old`` must occur


@dataclass(frozen=True)
class Fix:
    name: str
    why: str
    edits: tuple[Edit, ...]


_SEM_SEG = "detectron2/evaluation/sem_seg_evaluation.py"
_LAUNCH = "detectron2/engine/launch.py"

FIXES: tuple[Fix, ...] = (
    Fix(
        name="setup-without-csrc",
        why="The sdist lacks detectron2/layers/csrc, so its C++ extension cannot be built; "
        "detectron2._C is provided by detectron2_compat.extension instead.",
        edits=(
            Edit(
                "setup.py",
                '    ext_modules=get_extensions(),\n'
                '    cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},\n',
                "",
            ),
        ),
    ),
    Fix(
        name="drop-black-pin",
        why="install_requires pins the formatter black==21.4b2, which Detectron2 needs only for "
        "pretty-printing lazy configs, and which conflicts with today's packages.",
        edits=(Edit("setup.py", '        "black==21.4b2",\n', ""),),
    ),
    Fix(
        name="pillow-10-bilinear",
        why="Pillow 10 removed Image.LINEAR, an alias of Image.BILINEAR used as a default argument "
        "(so importing detectron2.data fails).",
        edits=(
            Edit(
                "detectron2/data/transforms/transform.py",
                "interp=Image.LINEAR",
                "interp=Image.BILINEAR",
            ),
        ),
    ),
    Fix(
        name="setuptools-81-importlib-resources",
        why="setuptools 81 removed pkg_resources, which model_zoo imports to locate its configs.",
        edits=(
            Edit(
                "detectron2/model_zoo/model_zoo.py",
                "import pkg_resources\n",
                "import importlib.resources\n",
            ),
            Edit(
                "detectron2/model_zoo/model_zoo.py",
                "    cfg_file = pkg_resources.resource_filename(\n"
                '        "detectron2.model_zoo", os.path.join("configs", config_path)\n'
                "    )\n",
                "    cfg_file = str(\n"
                '        importlib.resources.files("detectron2.model_zoo").joinpath("configs", '
                "config_path)\n"
                "    )\n",
            ),
        ),
    ),
    Fix(
        name="numpy-2-removed-aliases",
        why="NumPy 1.24 removed np.int, np.float and np.str (the training loader's class "
        "histogram uses np.int).",
        edits=(
            Edit("detectron2/data/build.py", "dtype=np.int)", "dtype=np.int64)"),
            Edit("detectron2/data/build.py", "dtype=np.int\n", "dtype=np.int64\n"),
            Edit(_SEM_SEG, "dtype=np.int)", "dtype=np.int64)", count=2),
            Edit(_SEM_SEG, "np.float)", "np.float64)", count=5),
            Edit("detectron2/data/datasets/pascal_voc.py", "dtype=np.str)", "dtype=str)"),
        ),
    ),
    Fix(
        name="launch-on-cpu-with-gloo",
        why="v0.6's launch asserts CUDA in each worker and always uses NCCL, so multi-process "
        "training on a CPU-only machine fails. Upstream Detectron2 has since used gloo when no GPU "
        "is present (commit b4b6cc9, 'Support launch() on CPU machines'); this is that behaviour. "
        "Each worker also destroys its process group when main_func returns: a gloo process that "
        "exits with a live group can abort in its exit (SIGABRT, 'terminate called without an "
        "active exception'; PyTorch issue 190489), failing a finished run.",
        edits=(
            Edit(
                _LAUNCH,
                '    assert torch.cuda.is_available(), "cuda is not available. Please check your '
                'installation."\n',
                "    has_gpu = torch.cuda.is_available()\n",
            ),
            Edit(_LAUNCH, 'backend="NCCL",', 'backend="NCCL" if has_gpu else "GLOO",'),
            Edit(
                _LAUNCH,
                "    assert num_gpus_per_machine <= torch.cuda.device_count()\n"
                "    torch.cuda.set_device(local_rank)\n",
                "    if has_gpu:\n"
                "        assert num_gpus_per_machine <= torch.cuda.device_count()\n"
                "        torch.cuda.set_device(local_rank)\n",
            ),
            Edit(
                _LAUNCH,
                "    comm.synchronize()\n\n    main_func(*args)\n",
                "    comm.synchronize()\n\n    main_func(*args)\n    if dist.is_initialized():\n"
                "        dist.destroy_process_group()\n",
            ),
        ),
    ),
    Fix(
        name="trainer-checkpoints-optimizer",
        why="v0.6's DefaultTrainer checkpoints only the iteration and its hooks' state, not its "
        "SimpleTrainer's: the optimizer (momentum buffers) and AMP's grad scaler were lost, so a "
        "`--resume`d run silently restarted SGD momentum. Upstream Detectron2 checkpoints them "
        "(commit ac6774f); so does this, and it still resumes from v0.6 checkpoints without them.",
        edits=(
            Edit(
                "detectron2/engine/defaults.py",
                "    def run_step(self):\n"
                "        self._trainer.iter = self.iter\n"
                "        self._trainer.run_step()\n",
                "    def run_step(self):\n"
                "        self._trainer.iter = self.iter\n"
                "        self._trainer.run_step()\n\n"
                "    def state_dict(self):\n"
                "        state = super().state_dict()\n"
                "        state[\"_trainer\"] = self._trainer.state_dict()\n"
                "        return state\n\n"
                "    def load_state_dict(self, state_dict):\n"
                "        super().load_state_dict(state_dict)\n"
                "        if \"_trainer\" in state_dict:  # absent from v0.6's own checkpoints\n"
                "            self._trainer.load_state_dict(state_dict[\"_trainer\"])\n",
            ),
        ),
    ),
    Fix(
        name="python-3.11-sample-from-set",
        why="Python 3.11's random.sample refuses sets, so MapDataset crashed instead of drawing "
        "another image when a mapper skips one (returns None).",
        edits=(
            Edit(
                "detectron2/data/common.py",
                "self._rng.sample(self._fallback_candidates, k=1)",
                "self._rng.sample(sorted(self._fallback_candidates), k=1)",
            ),
        ),
    ),
    Fix(
        name="meshgrid-indexing",
        why="PyTorch warns on every torch.meshgrid call without an indexing argument (a coming "
        "change of default), and the anchor generator calls it at every image: the warning "
        "appeared in every command's output. 'ij' is the behaviour v0.6 has always had.",
        edits=(
            Edit(
                "detectron2/modeling/anchor_generator.py",
                "torch.meshgrid(shifts_y, shifts_x)",
                'torch.meshgrid(shifts_y, shifts_x, indexing="ij")',
            ),
        ),
    ),
    Fix(
        name="export-without-caffe2",
        why="v0.6's detectron2.export imports its Caffe2 exporter at package import, and PyTorch "
        "no longer ships Caffe2, so even TracingAdapter and scripting_with_instances could not be "
        "imported. Upstream Detectron2 imports the Caffe2 parts only when Caffe2 is installed "
        "(commit 48b598b, 'Add support for ONNX-only'); here the Caffe2 names also stay defined "
        "and raise an error naming themselves when used.",
        edits=(
            Edit(
                "detectron2/export/__init__.py",
                "from .api import *\n",
                "try:\n"
                "    import caffe2.proto.caffe2_pb2  # noqa: F401\n"
                "except ImportError:\n"
                "    def _needs_caffe2(name):\n"
                "        def unavailable(*args, **kwargs):\n"
                "            raise ImportError(\n"
                "                f'detectron2.export.{name} exports to Caffe2, which PyTorch '\n"
                "                'no longer ships. Export with TracingAdapter + '\n"
                "                'torch.jit.trace, scripting_with_instances, or '\n"
                "                'torch.onnx.export on a traced TracingAdapter instead.')\n"
                "        unavailable.__name__ = name\n"
                "        return unavailable\n"
                "\n"
                "    add_export_config = _needs_caffe2('add_export_config')\n"
                "    export_caffe2_model = _needs_caffe2('export_caffe2_model')\n"
                "    Caffe2Model = _needs_caffe2('Caffe2Model')\n"
                "    export_onnx_model = _needs_caffe2('export_onnx_model')\n"
                "    Caffe2Tracer = _needs_caffe2('Caffe2Tracer')\n"
                "else:\n"
                "    from .api import *\n",
            ),
        ),
    ),
)

# Written as detectron2/_C.py in place of the compiled extension.
COMPILED_MODULE_SHIM = '''\
"""Detectron2's compiled ops, provided by mask_rcnn_ext's compatibility layer (see its README)."""
try:
    from detectron2_compat.extension import *  # noqa: F401,F403
    from detectron2_compat.extension import IS_COMPAT_LAYER  # noqa: F401
except ImportError as error:
    raise ImportError(
        "This Detectron2 was built by mask_rcnn_ext's `make setup` without C++ sources; its "
        "detectron2._C comes from the detectron2_compat package, which failed to import. "
        "Reinstall mask_rcnn_ext (`make setup`) or build Detectron2 from source."
    ) from error
'''

# Identifies this set of fixes in the installed version ("0.6+maskrcnnext.<digest>"), so that
# `make setup` rebuilds Detectron2 when the fixes or the shim change.
FIXES_DIGEST = hashlib.sha256(repr((SDIST, FIXES, COMPILED_MODULE_SHIM)).encode()).hexdigest()[:10]


def apply_fixes(source_root: Path) -> list[str]:
    """Apply every fix to the unpacked sdist at ``source_root``; returns the fixes' names."""
    for fix in FIXES:
        for edit in fix.edits:
            path = source_root / edit.path
            text = path.read_text()
            found = text.count(edit.old)
            if found != edit.count:
                raise RuntimeError(
                    f"fix {fix.name!r}: expected {edit.count} occurrence(s) of {edit.old!r} in "
                    f"{path}, found {found}; is this the pinned {SDIST.requirement} sdist?"
                )
            path.write_text(text.replace(edit.old, edit.new))
    (source_root / "detectron2" / "_C.py").write_text(COMPILED_MODULE_SHIM)
    return [fix.name for fix in FIXES]
