"""The base of every inventory model: unknown keys refused, values frozen once loaded.

Each field's attribute docstring is its description: it is what `fabwatch schema` publishes and
what the inventory reference shows, so a field without one is a field nobody can look up.
"""

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
