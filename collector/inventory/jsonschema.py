"""The inventory's JSON Schema (draft 2020-12), as a person writes an inventory in YAML.

pydantic describes what Python holds once a file is loaded; an editor checks what is typed before
the loader ran. So the models' schema is published with the loader's reading of a file:

- a duration is `30s` or a number of seconds, a cron expression a string of five fields, a time
  zone an IANA name (each one schema in `$defs`, named by `collector.inventory.base.published_as`);
- any value that is not a mapping or a list may be a `${VAR}`, `${VAR:-default}` or `${file:...}`
  reference, substituted before the models see it (`collector.inventory.load`): a port or a
  duration may come from the environment, so only what fits no string is checked further;
- top-level keys starting with `x-` hold YAML anchors and are ignored.

The reference page (`inventory_reference`) is rendered from the same schema, before the
substitutions are added (they would repeat on every line), in `collector.inventory.reference`.
"""

import copy
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from collector.inventory.base import PUBLISHED_TYPE
from collector.inventory.durations import MAX_SECONDS, PATTERN, format_duration
from collector.inventory.load import VARIABLE
from collector.inventory.models import Inventory

Schema = dict[str, Any]
DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:fabwatch:inventory"
"""Names the schema; editors find it by the path of the `# yaml-language-server: $schema=` line."""
SUBSTITUTION = "Substitution"

TYPES: dict[str, Schema] = {
    "Duration": {
        "title": "Duration",
        "description": "A duration as Prometheus writes it: a number and a unit (ms, s, m, h, d, w), several "
                       "joined from the largest, e.g. `90s`, `5m`, `1h30m`, `30d`; a plain number is seconds. "
                       "Positive, at most 10 years.",
        "anyOf": [{"type": "string", "pattern": PATTERN},
                  {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SECONDS}],
        "examples": ["30s", "1h30m", "7d"],
    },
    "CronExpression": {
        "title": "Cron expression",
        "description": "A five-field crontab (minute hour day-of-month month day-of-week, Sunday = 0 or 7), run on "
                       "the wall clock of `service.timezone`, daylight saving time included, e.g. `*/5 * * * *` "
                       "(every 5 minutes) or `0 6 * * 1-5` (06:00 on working days). It must fire at least once.",
        "type": "string",
        "pattern": r"^\s*\S+(\s+\S+){4}\s*$",
        "examples": ["*/5 * * * *", "0 6 * * 1-5"],
    },
    "TimeZone": {
        "title": "Time zone",
        "description": "An IANA time zone name, e.g. `Europe/Berlin`, `America/New_York` or `UTC`.",
        "type": "string",
        "pattern": r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$",
        "examples": ["Europe/Berlin", "UTC"],
    },
}
"""The schema of each type published by what is written (see `collector.inventory.base.published_as`)."""

SUBSTITUTION_SCHEMA: Schema = {
    "title": "Substitution",
    "description": "A value taken from the environment or a file when the inventory is loaded: `${VAR}`, "
                   "`${VAR:-default}` (when VAR is unset or empty) or `${file:/run/secrets/name}`, alone or within "
                   "a text; the value it yields must fit the key.",
    "type": "string",
    # The loader's own pattern, without Python's group names (editors read ECMAScript patterns).
    "pattern": re.sub(r"\?P<\w+>", "", VARIABLE.pattern),
}
_ANNOTATIONS = ("title", "description", "default", "examples", "deprecated")
_SCALARS = frozenset({"string", "number", "integer", "boolean"})


def inventory_schema() -> Schema:
    """Return the published JSON Schema of an inventory file."""
    schema = _with_substitutions(models_schema())
    # what a reader looks for first, the definitions last
    head = {"$schema": DIALECT, "$id": SCHEMA_ID, "title": schema.pop("title"),
            "description": schema.pop("description")}
    defs = schema.pop("$defs")
    return {**head, **schema, "$defs": defs}


def models_schema() -> Schema:
    """Return the models' schema as a person writes the inventory, without substitutions: what the
    reference page shows."""
    schema = Inventory.model_json_schema(mode="validation")
    schema = _publish_types(schema)
    _tidy(schema)
    schema["title"] = "fabwatch inventory"
    schema["description"] = ("The configuration of fabwatch: the sources it reads, the customer processes it "
                             "watches, their KPIs, targets and costs, and how their alerts are routed.")
    schema["patternProperties"] = {"^x-": {"description": "Ignored by fabwatch: holds YAML anchors to reuse in this "
                                                          "file (`x-columns: &columns ...`)."}}
    return schema


def schema_text(schema: Schema) -> str:
    """Return a schema as the committed file holds it: indented JSON, keys in the models' order."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def _publish_types(schema: Schema) -> Schema:
    """Replace each published type's marker by a reference to its definition in `$defs`."""
    used: set[str] = set()

    def publish(node: Schema) -> Schema:
        name = node.get(PUBLISHED_TYPE)
        if name is None:
            if isinstance(node.get("default"), int | float) and not isinstance(node["default"], bool) and any(
                    item.get("$ref") == "#/$defs/Duration" for item in node.get("anyOf", [])):
                return {**node, "default": format_duration(node["default"])}  # an optional duration's
            return node
        used.add(name)
        out = {"$ref": f"#/$defs/{name}", **{k: v for k, v in node.items() if k != PUBLISHED_TYPE}}
        if name == "Duration" and isinstance(out.get("default"), int | float):
            out["default"] = format_duration(out["default"])  # 3600.0 is written `1h`
        return out

    result: Schema = _rewrite(schema, publish)
    defs = {**result.get("$defs", {}), **{name: copy.deepcopy(TYPES[name]) for name in used}}
    result["$defs"] = dict(sorted(defs.items()))
    return result


def _rewrite(node: Any, visit: Callable[[Schema], Schema]) -> Any:
    """Return `node` with `visit` applied to every mapping, innermost first."""
    if isinstance(node, list):
        return [_rewrite(item, visit) for item in node]
    if isinstance(node, dict):
        return visit({key: _rewrite(value, visit) for key, value in node.items()})
    return node


def _tidy(schema: Schema) -> None:
    """Drop the titles pydantic derives from field names (`Pool Size`) and join the lines of
    descriptions (written as docstrings) into paragraphs."""
    for node in _subschemas(schema):
        for name, prop in node.get("properties", {}).items():
            if prop.get("title") == name.replace("_", " ").title():
                del prop["title"]
    for node in _mappings(schema):
        if isinstance(node.get("description"), str):
            node["description"] = paragraphs(node["description"])
        if "patternProperties" in node and "properties" not in node:
            _name_keys(node)


def _name_keys(node: Schema) -> None:
    """Write a map whose keys are names (`processes`) as names and values, so that a key that is no
    name is refused like the loader refuses it (pydantic writes a pattern that leaves it unchecked)."""
    (pattern, values), = node.pop("patternProperties").items()
    node["propertyNames"] = {"pattern": pattern, **node.get("propertyNames", {})}
    node["additionalProperties"] = values


def paragraphs(text: str) -> str:
    """Join a docstring's lines: one line per paragraph."""
    return "\n\n".join(" ".join(part.split()) for part in re.split(r"\n\s*\n", text.strip()))


def _subschemas(schema: Schema) -> Iterator[Schema]:
    yield schema
    yield from schema.get("$defs", {}).values()


def _mappings(node: Any) -> Iterator[Schema]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _mappings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _mappings(item)


def _with_substitutions(schema: Schema) -> Schema:
    """Let every scalar value be a `${...}` reference as well, except the `kind` tags that choose
    a model (the loader substitutes them too, but an editor then could not tell the model)."""
    schema = copy.deepcopy(schema)
    defs = schema["$defs"]
    tags = {d["propertyName"] for d in _mappings(schema) if isinstance(d.get("propertyName"), str)
            and isinstance(d.get("mapping"), dict)}
    for node in _subschemas(schema):
        for name, prop in node.get("properties", {}).items():
            if name not in tags:
                node["properties"][name] = _substitutable(prop, defs)
    for node in list(_mappings(schema)):  # the values of maps, the items of lists
        for key in ("additionalProperties", "items"):
            if isinstance(node.get(key), dict):
                node[key] = _substitutable(node[key], defs)
    defs[SUBSTITUTION] = copy.deepcopy(SUBSTITUTION_SCHEMA)
    schema["$defs"] = dict(sorted(defs.items()))
    return schema


def _substitutable(prop: Schema, defs: dict[str, Schema]) -> Schema:
    """Return `prop` accepting a substitution too, when it takes a scalar that not every string is."""
    if not _refuses_some_string_scalar(prop, defs) or _has_substitution(prop):
        return prop
    reference = {"$ref": f"#/$defs/{SUBSTITUTION}"}
    if "anyOf" in prop:
        return {**prop, "anyOf": [*prop["anyOf"], reference]}
    notes = {k: v for k, v in prop.items() if k in _ANNOTATIONS}
    core = {k: v for k, v in prop.items() if k not in _ANNOTATIONS}
    return {"anyOf": [core, reference], **notes}


def _has_substitution(prop: Schema) -> bool:
    return any(option.get("$ref") == f"#/$defs/{SUBSTITUTION}" for option in prop.get("anyOf", []))


def _refuses_some_string_scalar(prop: Schema, defs: dict[str, Schema]) -> bool:
    """True when `prop` takes a scalar (a number, a boolean, a string of some shape) and refuses
    some string, so that a `${...}` written there would be reported though the loader takes it."""
    options = prop.get("anyOf") or prop.get("oneOf")
    if options:
        takes_scalars = [o for o in options if _scalar(o, defs)]
        return bool(takes_scalars) and not any(_any_string(o, defs) for o in options)
    return _scalar(prop, defs) and not _any_string(prop, defs)


def _resolved(prop: Schema, defs: dict[str, Schema]) -> Schema:
    ref = prop.get("$ref")
    return defs[ref.removeprefix("#/$defs/")] if isinstance(ref, str) else prop


def _scalar(prop: Schema, defs: dict[str, Schema]) -> bool:
    target = _resolved(prop, defs)
    if "anyOf" in target:
        return any(_scalar(option, defs) for option in target["anyOf"])
    return target.get("type") in _SCALARS or "enum" in target or "const" in target


def _any_string(prop: Schema, defs: dict[str, Schema]) -> bool:
    target = _resolved(prop, defs)
    constrained = {"pattern", "enum", "const", "format", "minLength", "maxLength"}
    return target.get("type") == "string" and not constrained & set(target)
