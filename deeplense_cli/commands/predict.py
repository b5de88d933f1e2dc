from deeplense_cli.commands.unavailable import unavailable

predict = unavailable(
    "predict", "Predict classes for image files with a trained or exported model."
)
