from deeplense_cli.commands.unavailable import unavailable

simulate = unavailable("simulate", "Simulate a DeepLense dataset with lenstronomy.")
