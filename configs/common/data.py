"""LazyConfig: the data loaders and evaluator of the YAML configs (Detectron2 v0.6's defaults:
multi-scale training with horizontal flips, batches grouped by aspect ratio), on
``coco_2017_train`` / ``coco_2017_val``. They are built with mask_rcnn_ext's functions, so bad
data is handled as in YAML training (datasets/README.md, "Flawed data").

Another registered set: ``dataloader.train.dataset.names = "my_train"`` (and ``test``; the
evaluator follows the test set).
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts

from mask_rcnn_ext.data.build import build_checked_train_loader, training_dataset_dicts
from mask_rcnn_ext.data.mapper import ImageCheckingMapper
from mask_rcnn_ext.evaluation import FastCOCOEvaluator

dataloader = dict(
    train=L(build_checked_train_loader)(
        dataset=L(training_dataset_dicts)(names="coco_2017_train", mask_format="polygon"),
        mapper=L(ImageCheckingMapper)(
            is_train=True,
            augmentations=[
                L(T.ResizeShortestEdge)(short_edge_length=(640, 672, 704, 736, 768, 800),
                                        max_size=1333, sample_style="choice"),
                L(T.RandomFlip)(horizontal=True),
            ],
            image_format="BGR",
            use_instance_mask=True,
            instance_mask_format="polygon",
        ),
        total_batch_size=16,
        num_workers=4,
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
        mapper=L(ImageCheckingMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333,
                                                   sample_style="choice")],
            image_format="${...train.mapper.image_format}",
            use_instance_mask="${...train.mapper.use_instance_mask}",
        ),
        num_workers=4,
    ),
    evaluator=L(FastCOCOEvaluator)(dataset_name="${..test.dataset.names}",
                                   output_dir="${train.output_dir}/inference",
                                   boundary_ap=True, boundary_dilation_ratio=0.02),
)
