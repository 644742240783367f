"""Image classification with multi-exit CNNs: the task (task.py) and its criteria (criterion.py). The models
and datasets are msd_fast.models and msd_fast.data; the trainer finds the task by name (msd_fast.train.task)."""
