"""Training data: COCO loading (coco.py), the per-family train augmentations (damo_transforms.py,
rtdetr_transforms.py) and the DataLoaders (loader.py, whose docstring is the interface)."""
