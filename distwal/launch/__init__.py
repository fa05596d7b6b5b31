"""Launch helpers: the environment a job's ranks share, and `distwal run`."""
