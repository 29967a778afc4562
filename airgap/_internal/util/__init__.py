"""Small shared pieces: safe file I/O, tar streams, pipelines, terminal text."""
