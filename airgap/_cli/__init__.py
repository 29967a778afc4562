"""The command line: click commands that parse options, build the core's options object, call one core
function (``main``); the options they share (``options``); everything they print, and the exit code of
each failure (``render``); and the progress reporters handed to the core (``reporters``)."""

from airgap._cli.main import main, run

__all__ = ["main", "run"]
