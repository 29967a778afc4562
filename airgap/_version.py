"""The airgap version, in a module of its own so any module can import it without importing the package's API."""

__version__ = "0.1.0"
