"""Protocol, file and engine details behind airgap's public API."""
