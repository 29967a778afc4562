"""Deltas: content-defined recipes for layers rebuilt from a base bundle."""
