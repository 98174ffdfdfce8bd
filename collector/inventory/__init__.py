"""The inventory: the configuration's models and its loader, the lowest layer of fabwatch.

Nothing here imports anything of fabwatch above it; sources, engine, exporters, generators and the
application all read the inventory through these models.
"""
