"""``fsnn train``: the driver (checks, the MLflow run, Ray Train), the worker (one Ray Train
worker's loop: resume, epochs, checkpoints, logging), the recipe (model, optimiser, schedule and
loaders built from a Config; shared with Tune's trials), resume and Ray's trainer with fsnn's
failure policy."""
