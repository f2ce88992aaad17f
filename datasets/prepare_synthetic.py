#!/usr/bin/env python
"""Write the synthetic data set (``mask_rcnn_ext.data.synthetic``) where ``synthetic_train`` and
``synthetic_val`` are read: ``$DETECTRON2_DATASETS/synthetic``, default ``datasets/synthetic``
(relative to the working directory, as Detectron2's builtin data sets).

Usage: python datasets/prepare_synthetic.py [--root DIR] [--train 600] [--val 100] [--seed 0]
"""

from mask_rcnn_ext.data.synthetic import main

if __name__ == "__main__":
    main()
