"""The ``sdediff`` command line (installed as the ``sdediff_cli`` package)."""
