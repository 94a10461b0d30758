"""Where sessions run: the Backend seam, the Docker backend and the agent channel."""
