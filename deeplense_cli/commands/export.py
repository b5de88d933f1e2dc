from deeplense_cli.commands.unavailable import unavailable

export = unavailable("export", "Export a trained run (ONNX).")
