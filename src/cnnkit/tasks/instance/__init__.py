"""instance: the files have the same roles in every task (config, data, task, train, evaluate, predict, load)."""
