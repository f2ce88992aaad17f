"""Run the registry's Detectron2 v0.6 sources on today's PyTorch, NumPy, Pillow and setuptools.

PyPI's ``pb1-detectron2==0.6`` is upstream's v0.6 Python code without ``detectron2/layers/csrc``.
``python -m detectron2_compat.build`` (run by ``make setup``) applies the named fixes of
:mod:`detectron2_compat.fixes` to it and installs :mod:`detectron2_compat.extension` as its
``detectron2._C``. This package imports neither Detectron2 nor ``mask_rcnn_ext``, because
Detectron2 imports it while its own ``detectron2.layers`` is half-initialised.
"""
