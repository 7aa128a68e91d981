"""The semantic model: values followed through assignments, calls, classes, loaders and
files (``program`` resolves, ``interp`` evaluates, ``values`` are what it knows)."""
