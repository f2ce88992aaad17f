"""LazyConfig: each ``configs/**/*.py`` builds what its YAML twin builds (model, optimizer,
schedule, data loaders), and ``train_net.py`` trains, resumes and evaluates with one."""

import re

import pytest
import torch
from detectron2.config import instantiate
from detectron2.engine import default_argument_parser
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.utils.events import EventStorage
from omegaconf import ListConfig

from helpers import ROOT, root_script
from mask_rcnn_ext import load_config
from mask_rcnn_ext.config import load_lazy_config
from mask_rcnn_ext.engine import LazyTrainer, Trainer
from support.models import calibrated_model, synthetic_images, training_batch

CONFIGS = ROOT / "configs"
TWINS = ["Synthetic/mask_rcnn_R_18_FPN_cpu", "Synthetic/mask_rcnn_R_18_FPN_small_cpu",
         "Synthetic/mask_scoring_R_18_FPN_cpu", "COCO/mask_rcnn_R_50_FPN_1x",
         "COCO/mask_scoring_R_50_FPN_1x"]


def _twins(name: str):
    yaml_cfg = load_config(str(CONFIGS / f"{name}.yaml"), ["MODEL.DEVICE", "cpu"])
    lazy_cfg = load_lazy_config(str(CONFIGS / f"{name}.py"), ["train.device=cpu"])
    return yaml_cfg, lazy_cfg


def _plain(value, depth=0):
    """A comparable form of a module attribute: numbers, strings and sequences as they are,
    small tensors by value, other objects (Matcher, Box2BoxTransform, ...) by their attributes."""
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, (list, tuple, ListConfig)):  # LazyCall passes lists as ListConfig
        return [_plain(item, depth) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item, depth) for key, item in value.items()}
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.tolist() if value.numel() <= 64 else None)
    if isinstance(value, torch.nn.Module):
        return type(value).__name__
    if depth < 2 and hasattr(value, "__dict__"):
        return type(value).__name__, _plain(vars(value), depth + 1)
    return type(value).__name__


def _settings(model: torch.nn.Module) -> dict:
    """Every module's class and public attributes (thresholds, sizes, matchers, ...), by name.
    ``loss_weight`` is left to the loss comparison: the YAML builder sets only the weights it
    reads ({"loss_box_reg": 1.0}), LazyCall the default for each loss (1.0 each)."""
    return {name: (type(module).__name__,
                   {key: _plain(value) for key, value in vars(module).items()
                    if not key.startswith("_") and key != "loss_weight"})
            for name, module in model.named_modules()}


@pytest.mark.parametrize("name", TWINS)
def test_lazy_config_builds_the_yaml_configs_model(name):
    yaml_cfg, lazy_cfg = _twins(name)
    yaml_model = Trainer.build_model(yaml_cfg)
    lazy_model = LazyTrainer.build_model(lazy_cfg)
    assert _settings(lazy_model) == _settings(yaml_model)
    lazy_model.load_state_dict(yaml_model.state_dict())  # strict: same names and shapes


@pytest.mark.parametrize("name", [name for name in TWINS if name.startswith("Synthetic")])
def test_lazy_config_model_predicts_and_trains_as_the_yaml_configs(name):
    """Outputs and losses (with their weights) with the same weights: the small models only, the
    R-50 ones are the same code with other sizes (compared above)."""
    yaml_cfg, lazy_cfg = _twins(name)
    samples = synthetic_images(2, (160, 224), seed=1)
    # Random frozen batch norm overflows; calibrated on an image, activations stay finite.
    yaml_model = Trainer.build_model(yaml_cfg)  # with the same speed-ups
    yaml_model.load_state_dict(calibrated_model(yaml_cfg, samples[0][0]).state_dict())
    lazy_model = LazyTrainer.build_model(lazy_cfg)
    lazy_model.load_state_dict(yaml_model.state_dict())

    batch = training_batch(samples, yaml_cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    with torch.no_grad():
        expected = [out["instances"] for out in yaml_model.eval()(batch)]
        actual = [out["instances"] for out in lazy_model.eval()(batch)]
    for got, want in zip(actual, expected, strict=True):
        assert len(want) > 0
        for field, value in want.get_fields().items():
            value = value.tensor if hasattr(value, "tensor") else value
            other = getattr(got, field)
            torch.testing.assert_close(other.tensor if hasattr(other, "tensor") else other,
                                       value, rtol=0, atol=0)

    losses = {}
    for key, model in (("yaml", yaml_model), ("lazy", lazy_model)):
        torch.manual_seed(0)  # the same proposal and RoI sampling
        with EventStorage():
            losses[key] = model.train()(batch)
    assert losses["lazy"].keys() == losses["yaml"].keys()
    for loss, value in losses["yaml"].items():
        torch.testing.assert_close(losses["lazy"][loss], value, rtol=0, atol=0, msg=loss)


@pytest.mark.parametrize("name", ["Synthetic/mask_rcnn_R_18_FPN_cpu",
                                  "Synthetic/mask_rcnn_R_18_FPN_small_cpu",
                                  "COCO/mask_rcnn_R_50_FPN_1x"])
def test_lazy_config_trains_as_the_yaml_config(name):
    yaml_cfg, lazy_cfg = _twins(name)
    model = Trainer.build_model(yaml_cfg)
    yaml_optimizer = build_optimizer(yaml_cfg, model)
    lazy_cfg.optimizer.params.model = model
    lazy_optimizer = instantiate(lazy_cfg.optimizer)
    assert [{k: v for k, v in group.items() if k != "params"} | {"params": len(group["params"])}
            for group in lazy_optimizer.param_groups] == [
        {k: v for k, v in group.items() if k != "params"} | {"params": len(group["params"])}
        for group in yaml_optimizer.param_groups]

    max_iter = yaml_cfg.SOLVER.MAX_ITER
    assert lazy_cfg.train.max_iter == max_iter
    assert lazy_cfg.train.checkpointer.period == yaml_cfg.SOLVER.CHECKPOINT_PERIOD
    assert lazy_cfg.train.init_checkpoint == yaml_cfg.MODEL.WEIGHTS
    assert lazy_cfg.train.eval_period == yaml_cfg.TEST.EVAL_PERIOD
    yaml_schedule = build_lr_scheduler(yaml_cfg, yaml_optimizer)
    lazy_multiplier = instantiate(lazy_cfg.lr_multiplier)
    for iteration in range(max_iter):
        expected = yaml_schedule.get_last_lr()[0]
        assert lazy_cfg.optimizer.lr * lazy_multiplier(iteration / max_iter) == pytest.approx(
            expected, rel=1e-9), iteration
        yaml_schedule.step()
        if iteration > 2000:
            break  # past the warm-up; the steps are checked from here by their values
    for step in yaml_cfg.SOLVER.STEPS:
        factor = lazy_multiplier(step / max_iter) / lazy_multiplier((step - 1) / max_iter)
        assert factor == pytest.approx(yaml_cfg.SOLVER.GAMMA)

    for is_train, loader in ((True, lazy_cfg.dataloader.train), (False, lazy_cfg.dataloader.test)):
        expected_mapper = _plain(vars(_yaml_mapper(yaml_cfg, is_train)))
        assert _plain(vars(instantiate(loader.mapper))) == expected_mapper
        assert loader.num_workers == yaml_cfg.DATALOADER.NUM_WORKERS
    assert lazy_cfg.dataloader.train.total_batch_size == yaml_cfg.SOLVER.IMS_PER_BATCH
    assert (lazy_cfg.dataloader.train.dataset.names,) == yaml_cfg.DATASETS.TRAIN
    assert (lazy_cfg.dataloader.test.dataset.names,) == yaml_cfg.DATASETS.TEST
    assert lazy_cfg.dataloader.evaluator.dataset_name == yaml_cfg.DATASETS.TEST[0]


def _yaml_mapper(cfg, is_train):
    from mask_rcnn_ext.data.mapper import ImageCheckingMapper

    return ImageCheckingMapper(cfg, is_train=is_train)


def _train_net():
    return root_script("train_net")


def test_train_net_trains_resumes_and_evaluates_a_lazy_config(tiny_coco_dataset, tmp_path, capsys):
    train_net = _train_net()
    output = tmp_path / "output"
    small = [f"dataloader.train.dataset.names={tiny_coco_dataset}",
             f"dataloader.test.dataset.names={tiny_coco_dataset}",
             "dataloader.train.mapper.augmentations.0.short_edge_length=[128]",
             "dataloader.test.mapper.augmentations.0.short_edge_length=128",
             "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
             "dataloader.test.num_workers=0", "model.roi_heads.box_predictor.test_score_thresh=0.0",
             "lr_multiplier.warmup_length=0.25", "lr_multiplier.scheduler.milestones=[1]",
             "lr_multiplier.scheduler.values=[1.0,0.1]",
             f"train.output_dir={output}"]
    config = str(CONFIGS / "Synthetic" / "mask_rcnn_R_18_FPN_cpu.py")
    parser = default_argument_parser()  # Detectron2's own, as its lazyconfig trainer takes
    results = train_net.main(parser.parse_args(
        ["--config-file", config, "train.max_iter=2", "train.checkpointer.period=1", *small]))
    assert (output / "model_final.pth").is_file() and (output / "model_0000000.pth").is_file()
    assert (output / "metrics.json").is_file() and (output / "config.yaml").is_file()
    assert set(results) == {"bbox", "segm", "boundary"}  # evaluated after the last iteration
    assert "copypaste: Task: segm" in capsys.readouterr().out
    log = (output / "log.txt").read_text()  # the config file as text, not coloured for a terminal
    assert "model.roi_heads.num_classes = 4" in log and "\x1b[" not in log

    trainer_state = torch.load(output / "model_final.pth", weights_only=True)
    assert trainer_state["iteration"] == 1
    train_net.main(train_net.argument_parser().parse_args(
        ["--config-file", config, "--resume", "train.max_iter=3", *small]))
    assert torch.load(output / "model_final.pth", weights_only=True)["iteration"] == 2

    results = train_net.main(parser.parse_args(
        ["--config-file", config, "--eval-only", f"train.init_checkpoint={output}/model_final.pth",
         *small]))
    assert set(results) == {"bbox", "segm", "boundary"}


def test_lazy_config_errors_name_the_key_and_file(tmp_path):
    config = str(CONFIGS / "Synthetic" / "mask_rcnn_R_18_FPN_cpu.py")
    with pytest.raises(KeyError, match=r"override 'train.max_itr=5'.*no key 'train.max_itr'"):
        load_lazy_config(config, ["train.max_itr=5"])
    assert load_lazy_config(config, ["+train.note=mine"]).train.note == "mine"
    partial = tmp_path / "model_only.py"
    partial.write_text("from detectron2.config import LazyCall as L\nfrom torch import nn\n"
                       "model = L(nn.Identity)()\n")
    with pytest.raises(KeyError,
                       match=rf"{re.escape(str(partial))} does not define 'dataloader.train'"):
        load_lazy_config(str(partial))
    with pytest.raises(FileNotFoundError, match=r"missing\.py does not exist"):
        load_lazy_config(str(tmp_path / "missing.py"))
