#!/usr/bin/env python
"""Write a synthetic data set (``mask_rcnn_ext.data.synthetic``) where ``<set>_train`` and
``<set>_val`` are read: ``$DETECTRON2_DATASETS/<set>``, default ``datasets/<set>`` (relative to
the working directory, as Detectron2's builtin data sets).

Usage: python datasets/prepare_synthetic.py [--set synthetic|synthetic_small] [--root DIR]
[--train N] [--val N] [--seed 0]
"""

from mask_rcnn_ext.data.synthetic import main

if __name__ == "__main__":
    main()
