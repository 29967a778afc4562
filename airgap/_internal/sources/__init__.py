"""Image sources for pack: image archives (docker-save, OCI) and registries."""
