"""What the tests and the benchmarks share and the product does not ship: synthetic inputs,
calibrated random models, and synthetic COCO evaluation problems."""
