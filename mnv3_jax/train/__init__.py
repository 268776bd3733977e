"""Training: the pure steps, optimizer and EMA, checkpoints, pre-flight checks, the loop around
them (`trainer.train_and_evaluate`) and a run's curves (`history`)."""
