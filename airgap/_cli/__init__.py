"""The command line: click commands that parse, build an options object, call one core function and render
its result (``commands``), and the progress reporters it hands to the core (``reporters``)."""

from airgap._cli.commands import main, run

__all__ = ["main", "run"]
