from deeplense_cli.commands.unavailable import unavailable

benchmark = unavailable("benchmark", "Run the accuracy benchmark sweep.")
