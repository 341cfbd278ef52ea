"""Running jobs: the runner, executors, the trainer, checkpoint selection, the run folder, regression checks."""
