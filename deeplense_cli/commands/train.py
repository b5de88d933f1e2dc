from deeplense_cli.commands.unavailable import unavailable

train = unavailable("train", "Train an architecture on a dataset.")
