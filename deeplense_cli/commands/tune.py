from deeplense_cli.commands.unavailable import unavailable

tune = unavailable("tune", "Tune hyper-parameters with Ray Tune (ASHA).")
