"""The base of every inventory model: unknown keys refused, values frozen once loaded.

Each field's attribute docstring is its description: it is what `fabwatch schema` publishes and
what the inventory reference shows, so a field without one is a field nobody can look up.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, WithJsonSchema

PUBLISHED_TYPE = "x-fabwatch-type"
"""The key that marks a type whose JSON Schema is one of `collector.inventory.jsonschema.TYPES`."""


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def published_as(name: str) -> WithJsonSchema:
    """Publish a type by what a person writes in YAML (`30s`), not by what Python holds (`30.0`):
    the JSON Schema refers to `$defs/<name>`, defined in `collector.inventory.jsonschema.TYPES`."""
    return WithJsonSchema({PUBLISHED_TYPE: name})


def examples(*values: dict[str, Any]) -> ConfigDict:
    """The configuration of a model with examples, as written in YAML: the JSON Schema offers them
    to editors and the inventory reference shows them (a test loads each one with its model)."""
    return ConfigDict(json_schema_extra={"examples": list(values)})
