"""The ``medpfl`` command line."""
