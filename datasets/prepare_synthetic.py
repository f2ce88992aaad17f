#!/usr/bin/env python
"""Write the synthetic data set (``mask_rcnn_ext.data.synthetic``) into ``datasets/synthetic``.

Usage: python datasets/prepare_synthetic.py [--root DIR] [--train 600] [--val 100] [--seed 0]
"""

import sys
from pathlib import Path

from mask_rcnn_ext.data.synthetic import main

if __name__ == "__main__":
    main(["--root", str(Path(__file__).parent / "synthetic"), *sys.argv[1:]])
