"""A run on disk: :class:`~deeplense_cli.runs.rundir.RunDir` writes and reads the resolved
config, class names, transform, metrics and checkpoints of one training run, and rebuilds its
model. Training writes runs; evaluation, export, predict and tune read them.

Imports ``core`` and ``registry`` (to rebuild a model by its architecture's name).
"""

# A run's checkpoints (RUN/checkpoints/NAME.pt): its best epoch's, and its latest (resume
# continues from it). Here, light, so that the command line offers them without rundir.
CHECKPOINTS = ("best", "last")
