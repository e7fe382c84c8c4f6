"""Training: the MC-SSL0.0 loop and what only it needs (data pipeline, GMML, schedules,
distributed set-up, run-health monitors).

    from mcssl.train import train
    train(load_config("smoke"), "runs/smoke")

Imports flow one way: evaluation / explore / app -> train -> models, losses -> common
(config, images, scenes, checkpoint). Online quality monitors are passed in by the caller
(``mcssl.evaluation.online``), so nothing here imports evaluation.
"""

from mcssl.train.loop import Monitor, Trainer, TrainError, load_run_config, train

__all__ = ["Monitor", "Trainer", "TrainError", "load_run_config", "train"]
