"""The training engine both families share: the loop, optimizer and lr schedules, EMA, checkpoints,
periodic COCO evaluation, logs, and the multi-process (DDP) plumbing. Recipes are data (training/recipes)."""
