"""The ``sdediff`` executable: Ctrl-C exits 130 and SIGTERM 143, each in one line.

The promise holds from the moment the executable loads this module (its first
statement), start-up included; before that Python itself is starting and reports an
interrupt its own way.  Importing torch takes a second or two.  An interrupt raised
in the middle of an import can leave half-initialised modules behind that fail in odd ways later (a
RecursionError instead of a clean stop), so while the command line is imported
Ctrl-C ends the process at once: nothing has been written yet.  Afterwards it is
a KeyboardInterrupt again, which the commands turn into a clean stop (``train``
saves first); one that escapes them, or click's "Aborted!" (exit 1), ends here.
Once the command line is imported, SIGTERM raises :class:`Terminated`, a
KeyboardInterrupt, so the same clean-up runs (temporary files removed) and the exit
status is 143; ``train`` handles it itself (it saves a checkpoint first).
"""

import _signal  # built in: the handler goes in before any import that takes time
import os
import sys

INTERRUPTED, TERMINATED = 130, 143  # 128 + the signal, the shells' convention
MESSAGE = "interrupted: sdediff stopped; nothing half-written is left.\n"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that its clean-up runs as for Ctrl-C."""


def _terminate(signum, frame) -> None:
    raise Terminated


def _leave_at_once(signum, frame) -> None:
    os.write(2, MESSAGE.encode())
    os._exit(INTERRUPTED)


# Installed as soon as the executable loads this module, not when ``run`` starts.
_previous = _signal.signal(_signal.SIGINT, _leave_at_once)


def _name_the_rank(err) -> None:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) every error line names its rank, once."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    if not (world.isdigit() and int(world) > 1):
        return
    line, prefix = err.format_message(), f"rank {rank}: "
    named = line if line.startswith(prefix) else prefix + line.replace(prefix, "", 1)
    err.format_message = lambda: named  # what err.show() prints after "Error: "


def run() -> None:
    """Import and run the command line, turning a stray KeyboardInterrupt into exit 130."""
    import click

    from .main import main

    _signal.signal(_signal.SIGINT, _previous)
    _signal.signal(_signal.SIGTERM, _terminate)
    try:
        try:
            code = main.main(standalone_mode=False)
        except click.Abort:  # click's form of KeyboardInterrupt / EOF on a prompt
            raise KeyboardInterrupt from None
        except click.ClickException as err:
            _name_the_rank(err)
            err.show()
            sys.exit(err.exit_code)
        sys.exit(code if isinstance(code, int) else 0)
    except Terminated:
        sys.stderr.write(MESSAGE.replace("interrupted", "terminated"))
        sys.exit(TERMINATED)
    except KeyboardInterrupt:
        sys.stderr.write(MESSAGE)
        sys.exit(INTERRUPTED)
