from deeplense_cli.commands.unavailable import unavailable

jobs = unavailable("jobs", "List, follow and cancel SLURM jobs.")
