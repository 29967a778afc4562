"""The bundle format on disk: reading, writing, parts, checks, media, the POSIX installer."""
