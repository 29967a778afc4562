"""airgap: signed, chunked, streamed container image bundles for air-gapped networks."""

__version__ = "0.1.0"
