from airgap._cli import run

run()
