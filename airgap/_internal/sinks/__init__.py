"""Where install delivers images: the engine's load, the loopback registry, registries, archives."""
