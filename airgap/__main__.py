"""``python -m airgap``: the same as the ``airgap`` command."""

from airgap._cli import run

run()
