"""Tests of the application layer: the CLI and the service wiring."""
