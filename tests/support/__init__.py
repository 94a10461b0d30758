"""Helpers shared by tests and scripts (reference servers, fixtures)."""
