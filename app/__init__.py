"""The application: the CLI and the service wiring, the only layer that imports all the others."""
