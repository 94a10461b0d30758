"""The Docker backend: hardened containers on the local engine, through docker-py."""
