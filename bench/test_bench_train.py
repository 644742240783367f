"""pytest-benchmark view of bench_train.py (quick settings): `pytest bench/ --benchmark-only`."""
import tempfile

import pytest
import torch

from bench.bench_train import cifar_shaped

from msd_fast.train.config import DEFAULTS
from msd_fast.train.trainer import Trainer
from bench.train_steps import run_steps


@pytest.mark.parametrize("model", ["resnet18", "msdnet1"])
def test_train_step(benchmark, model):
    cfg = dict(DEFAULTS, model=model, width=0.25, batch_size=64, lr=0.05, out_dir=tempfile.mkdtemp(),
               run_name="bench", progress=False, tensorboard=False, resume=None)
    trainer = Trainer(cfg, data=cifar_shaped(1024))
    run_steps(trainer, 2)

    def step():
        run_steps(trainer, 1)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=5, iterations=1)
