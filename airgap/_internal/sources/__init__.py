"""Image sources for pack: the Docker engine's export (``engine.py``), image archives (``archive.py``) and
registries (``registry.py``), each behind the protocol in ``base.py`` and chosen in ``kinds.py``."""
