"""`sdft eval`: a model (and adapter) on benchmark tasks from `sdft.tasks`."""
