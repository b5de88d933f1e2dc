"""First-party deeplense architecture plugins, loaded through the ``deeplense`` entry points."""
