from deeplense_cli.commands.unavailable import unavailable

evaluate = unavailable("evaluate", "Evaluate a trained run on its test split.")
