"""Protocol clients: the Docker Engine API and the OCI distribution API."""
