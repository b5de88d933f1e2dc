"""The command line's face: one module per command (click options, a call into an engine,
rich output). Nothing below this package imports click or rich.

``deeplense --help`` imports every command module, so they import engines that pull in NumPy
or torch inside the command function, and only light modules (core, registry, the training
config) at the top.
"""
