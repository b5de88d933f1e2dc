"""What every other part needs: the error type, atomic writes, paths, YAML, the console,
the CPU's features, the torch device and threads, durations and the version.

Imports nothing else from deeplense_cli; ``console`` is the one module here that uses rich.
"""
