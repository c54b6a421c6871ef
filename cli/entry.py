"""The ``sdediff`` executable: Ctrl-C at any moment, start-up included, exits 130 in one line.

Importing torch takes a second or two; an interrupt then (or while click parses
the options, which would print "Aborted!" and exit 1) ends here as one line.
"""

from __future__ import annotations

import sys

INTERRUPTED = 130


def run() -> None:
    """Import and run the command line, turning a stray KeyboardInterrupt into exit 130."""
    try:
        import click

        from .main import main

        try:
            code = main.main(standalone_mode=False)
        except click.Abort:  # click's form of KeyboardInterrupt / EOF on a prompt
            raise KeyboardInterrupt from None
        except click.ClickException as err:
            err.show()
            sys.exit(err.exit_code)
        sys.exit(code if isinstance(code, int) else 0)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: sdediff stopped; nothing half-written is left.\n")
        sys.exit(INTERRUPTED)
