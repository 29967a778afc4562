"""Data models: the bundle manifest, image names and platforms, sizes, image manifests."""
