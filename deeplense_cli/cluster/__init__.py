"""deeplense work on a SLURM cluster: submit, record, follow and cancel jobs (via submitit).

* :mod:`~deeplense_cli.cluster.options` -- what a job asks for (``SlurmOptions``)
* :mod:`~deeplense_cli.cluster.slurm` -- sbatch/sacct/scancel/sinfo: availability, states
* :mod:`~deeplense_cli.cluster.records` -- the job records ``deeplense jobs`` lists
* :mod:`~deeplense_cli.cluster.submit` -- a callable as a job or job array; ``Resumable``
* :mod:`~deeplense_cli.cluster.wait` -- a job's handle; following it to its result
* :mod:`~deeplense_cli.cluster.jobs` -- the entry points of train, tune and benchmark jobs

May import training/, tune/ and the packages below them; only commands/ imports it.
``jobs`` is not re-exported here: it imports the training engine, which ``deeplense jobs``
does not need.
"""

from deeplense_cli.cluster.options import SlurmOptions, options_from_config, time_limit_minutes
from deeplense_cli.cluster.records import job_logs, jobs_dir, list_jobs
from deeplense_cli.cluster.slurm import (
    NO_SLURM,
    NO_SLURM_HINT,
    cancel,
    sacct_states,
    slurm_available,
)
from deeplense_cli.cluster.submit import Resumable, submit, submit_array
from deeplense_cli.cluster.wait import SubmittedJob, follow, wait

__all__ = [
    "NO_SLURM",
    "NO_SLURM_HINT",
    "Resumable",
    "SlurmOptions",
    "SubmittedJob",
    "cancel",
    "follow",
    "job_logs",
    "jobs_dir",
    "list_jobs",
    "options_from_config",
    "sacct_states",
    "slurm_available",
    "submit",
    "submit_array",
    "time_limit_minutes",
    "wait",
]
