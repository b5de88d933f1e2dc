from deeplense_cli.commands.unavailable import unavailable

download = unavailable("download", "Download a released dataset.")
info = unavailable("info", "Describe a dataset.")
show = unavailable("show", "Draw example images per class.")
