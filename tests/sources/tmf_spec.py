"""Validate JSON documents against the official TMF specification files (swagger 2 / OAS 3)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SPEC_DIR = Path(__file__).resolve().parents[3] / "shared" / "reference" / "tmf"
FILES = {
    ("tmf621", 4): "TMF621-TroubleTicket-v4.0.0.swagger.json",
    ("tmf621", 5): "TMF621-Trouble_Ticket-v5.0.1.oas.yaml",
    ("tmf622", 4): "TMF622-ProductOrder-v4.0.0.swagger.json",
    ("tmf622", 5): "TMF622-ProductOrdering-v5.0.0.oas.yaml",
    ("tmf676", 4): "TMF676-Payment-v4.0.0.swagger.json",
    ("tmf678", 4): "TMF678-CustomerBill-v4.0.0.swagger.json",
    ("tmf678", 5): "TMF678-CustomerBill-v5.0.0.oas.yaml",
    ("tmf683", 4): "TMF683-PartyInteraction-v4.0.0.swagger.json",
    ("tmf683", 5): "TMF683-Party_Interaction-v5.0.0.oas.yaml",
}


@cache
def _document(api: str, version: int) -> dict[str, Any]:
    path = SPEC_DIR / FILES[(api, version)]
    text = path.read_text(encoding="utf-8")
    loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


def schema_names(api: str, version: int) -> set[str]:
    """Return the names of every schema the specification defines."""
    doc = _document(api, version)
    return set(doc["definitions"] if version == 4 else doc["components"]["schemas"])


@cache
def validator(api: str, version: int, name: str) -> Draft4Validator:
    """Return a validator for one named schema of a specification (refs resolved in the file)."""
    uri = f"urn:fabwatch:{api}:v{version}"
    registry: Registry[Any] = Registry().with_resource(uri, Resource(_document(api, version), DRAFT4))
    pointer = "definitions" if version == 4 else "components/schemas"
    assert name in schema_names(api, version), f"{name} not in the {api} v{version} spec"
    return Draft4Validator({"$ref": f"{uri}#/{pointer}/{name}"}, registry=registry,
                           format_checker=FormatChecker())


def errors(api: str, version: int, name: str, document: Any) -> list[str]:
    """Return every validation error of a document against a named schema, as readable lines."""
    found = validator(api, version, name).iter_errors(document)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found]
