"""The published JSON Schema: complete, valid, in step with the models, and agreeing with the loader.

The committed files are compared with what `fabwatch schema` prints in tests/app/test_cli.py.
"""

import json
import re
import subprocess
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from pydantic import BaseModel

from collector.inventory.jsonschema import TYPES, inventory_schema
from collector.inventory.load import VARIABLE, ConfigError, load_inventory
from collector.inventory.models import Inventory

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "schema" / "inventory.schema.json"
INVENTORIES = sorted({*ROOT.glob("examples/*.yaml"), *ROOT.glob("examples/docs/**/*.yaml"),
                      *ROOT.glob("docs/**/*.yaml")})
"""Every inventory shipped: the examples, and those the documentation shows."""


def committed() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(COMMITTED.read_text(encoding="utf-8"))
    return schema


def models() -> Iterator[type[BaseModel]]:
    """Yield every model reachable from `Inventory`, once."""
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [Inventory]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        yield model
        for info in model.model_fields.values():
            todo += _models_in(info.annotation)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def definition(schema: dict[str, Any], name: str) -> Draft202012Validator:
    """A validator of one definition of the schema (`$defs/<name>`)."""
    return Draft202012Validator({"$defs": schema["$defs"], "$ref": f"#/$defs/{name}"})


def editor_view(text: str) -> Any:
    """Read YAML as an editor's language server does (YAML 1.2, JSON's data model): `2026-12-25`
    is a string, and keys are strings (`{1: critical}` has the key "1")."""
    return _json_keys(yaml.load(text, _Yaml12Loader))  # a SafeLoader


class _Yaml12Loader(yaml.SafeLoader):
    yaml_implicit_resolvers: ClassVar = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _json_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_keys(v) for v in value]
    return value


def test_every_field_of_every_model_has_a_description() -> None:
    missing = [f"{model.__name__}.{name}" for model in models()
               for name, info in model.model_fields.items() if not (info.description or "").strip()]
    assert not missing, "give these fields an attribute docstring (what it means, unit, default behaviour): " + \
        ", ".join(sorted(missing))


def test_every_key_of_the_published_schema_has_a_description() -> None:
    """pydantic drops a key's description where it equals its model's: the reference would show none."""
    schema = inventory_schema()
    missing = [f"{where}.{key}" for where, node in [("", schema), *schema["$defs"].items()]
               for key, prop in node.get("properties", {}).items() if not prop.get("description")]
    assert not missing


def test_the_schema_has_every_key_of_every_model_and_no_other() -> None:
    """A field added to a model and not to the committed schema fails here (and in tests/app/test_cli.py)."""
    defs = committed()["$defs"]
    for model in models():
        keys = {info.alias or name for name, info in model.model_fields.items()}
        published = committed() if model is Inventory else defs[model.__name__]
        assert set(published["properties"]) == keys, f"{model.__name__}: run `fabwatch schema > {COMMITTED.name}`"
        assert published["additionalProperties"] is False, model.__name__
        assert set(published.get("required", [])) == {info.alias or name for name, info in model.model_fields.items()
                                                      if info.is_required()}, model.__name__


def test_the_committed_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = committed()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"]
    assert schema["title"]


def test_there_are_inventories_to_check() -> None:
    assert {p.name for p in INVENTORIES} >= {"operator.yaml", "realistic-postgres.yaml"}


@pytest.mark.parametrize("path", INVENTORIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_inventory_validates_against_the_committed_schema(path: Path) -> None:
    errors = [f"{e.json_path}: {e.message}" for e in Draft202012Validator(committed()).iter_errors(
        editor_view(path.read_text(encoding="utf-8")))]
    assert not errors


@pytest.mark.parametrize("path", INVENTORIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_inventory_names_the_schema_for_editors(path: Path) -> None:
    relative = Path(*[".."] * len(path.parent.relative_to(ROOT).parts), "schema", "inventory.schema.json")
    assert path.read_text(encoding="utf-8").splitlines()[0] == f"# yaml-language-server: $schema={relative}"
    assert (path.parent / relative).resolve() == COMMITTED


def test_every_model_example_is_valid_for_its_model_and_the_schema() -> None:
    schema = committed()
    shown = 0
    for model in models():
        for example in (model.model_config.get("json_schema_extra") or {}).get("examples", []):  # type: ignore[union-attr]
            model.model_validate(substituted(example))
            validator = definition(schema, model.__name__)
            assert not [e.message for e in validator.iter_errors(example)], model.__name__
            shown += 1
    assert shown >= 20


EXAMPLE_ENVIRONMENT = {"CRM_DSN": "postgresql+asyncpg://fabwatch:secret@crm-db.example:5432/crm"}


def substituted(example: Any) -> Any:
    """The example as the models receive it: `${VAR}` replaced, as the loader does."""
    text = json.dumps(example)
    return json.loads(VARIABLE.sub(lambda m: EXAMPLE_ENVIRONMENT.get(m["name"], "s3cret"), text))


def _operator() -> dict[str, Any]:
    data: dict[str, Any] = editor_view((ROOT / "examples" / "operator.yaml").read_text(encoding="utf-8"))
    return data


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def change(data: dict[str, Any]) -> None:
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def change(data: dict[str, Any]) -> None:
        node = data
        for key in parents:
            node = node[key]
        del node[last]
    return change


def _rename(path: str, new: str) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def change(data: dict[str, Any]) -> None:
        node = data
        for key in parents:
            node = node[key]
        node[new] = node.pop(last)
    return change


REFUSED = [
    # (change, where the loader and the schema both find the problem, the schema's keyword)
    pytest.param(_set("service.listen_port", 9464), "service.listen_port", "additionalProperties",
                 id="unknown-key"),
    pytest.param(_set("sources.operator.kind", "oracle"), "sources.operator.kind", "const", id="unknown-kind"),
    pytest.param(_set("sources.operator.interval", "5 minutes"), "sources.operator.interval", "pattern",
                 id="bad-duration"),
    pytest.param(_set("sources.operator.interval", -5), "sources.operator.interval", "exclusiveMinimum",
                 id="negative-duration"),
    pytest.param(_set("sources.operator.cron", "*/5 * * *"), "sources.operator.cron", "pattern", id="cron-4-fields"),
    pytest.param(_set("sources.operator.pool_size", "many"), "sources.operator.pool_size", "type",
                 id="not-a-number"),
    pytest.param(_set("sources.operator.pool_size", 50), "sources.operator.pool_size", "maximum", id="too-large"),
    pytest.param(_set("service.currency", "euro"), "service.currency", "pattern", id="bad-currency"),
    pytest.param(_set("processes.problem.kpis.backlog.kind", "backlogs"), "processes.problem.kpis.backlog.kind",
                 "const", id="unknown-kpi-kind"),
    pytest.param(_drop("processes.problem.records.open_statuses"), "processes.problem.records.open_statuses",
                 "required", id="missing-required"),
    pytest.param(_rename("processes.problem", "Problem"), "processes.Problem", "propertyNames", id="bad-name"),
    pytest.param(_set("processes.problem.kpis.resolved_in_time.window", True),
                 "processes.problem.kpis.resolved_in_time.window", "type", id="boolean-duration"),
]


def _schema_reasons(data: Any) -> set[tuple[str, str]]:
    """(dotted path, keyword) of every reason the schema gives, those inside anyOf/oneOf included."""
    def walk(errors: list[ValidationError]) -> Iterator[tuple[str, str]]:
        for error in errors:
            path = ".".join(str(p) for p in error.absolute_path)
            if error.validator == "required":  # reported at the mapping that lacks the key
                missing = re.findall(r"'([^']+)' is a required property", error.message)
                path = ".".join([path, *missing]) if path else ".".join(missing)
            if error.validator == "additionalProperties":  # reported at the mapping that has the keys
                unexpected = re.findall(r"'([^']+)'", error.message.partition("(")[2])
                path = ".".join([path, *unexpected]) if path else ".".join(unexpected)
            keyword = str(error.validator)
            if "propertyNames" in error.absolute_schema_path:  # a key that is no name: reported at its mapping
                path, keyword = f"{path}.{error.instance}", "propertyNames"
            yield path, keyword
            yield from walk(list(error.context or []))
    return set(walk(list(Draft202012Validator(committed()).iter_errors(data))))


def _loader_paths(data: Any, tmp_path: Path) -> set[str]:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_inventory([path], {})
    return {problem.path for problem in caught.value.problems}


@pytest.mark.parametrize(("change", "where", "keyword"), REFUSED)
def test_the_schema_refuses_what_the_loader_refuses_for_the_same_reason(
        change: Callable[[dict[str, Any]], None], where: str, keyword: str, tmp_path: Path) -> None:
    data = _operator()
    change(data)
    loader = _loader_paths(data, tmp_path)
    assert any(p == where or where.startswith(f"{p}.") or p.startswith(f"{where}.") for p in loader), loader
    assert (where, keyword) in _schema_reasons(data)


ACCEPTED = [
    pytest.param(_set("sources.operator.pool_size", "${FABWATCH_POOL:-4}"), id="number-from-the-environment"),
    pytest.param(_set("service.currency", "${CURRENCY:-CHF}"), id="pattern-from-the-environment"),
    pytest.param(_set("sources.operator.interval", 90), id="duration-in-seconds"),
    pytest.param(_set("sources.operator.timeout", "1m30s"), id="duration-with-two-units"),
    pytest.param(_set("x-anything", {"a": 1}), id="x-key"),
    pytest.param(_set("alerting.time_intervals.office_hours.holidays", ["2026-12-25", "2027-01-01"]), id="date"),
    pytest.param(_set("processes.problem.records.lookups", {"status": {"1": "open"}}), id="integer-code-key"),
]


@pytest.mark.parametrize("change", ACCEPTED)
def test_the_schema_accepts_what_the_loader_accepts(change: Callable[[dict[str, Any]], None], tmp_path: Path) -> None:
    data = _operator()
    change(data)
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    load_inventory([path], {})
    assert not _schema_reasons(data)


def test_every_pattern_is_one_an_editor_can_read() -> None:
    """Editors run JSON Schema patterns as JavaScript regular expressions (with the `u` flag), which
    refuse some of Python's syntax (`(?P<name>...)`, `\\Z`): compile each one with Node.js."""
    patterns = sorted({node["pattern"] for node in _mappings(committed()) if isinstance(node.get("pattern"), str)})
    script = "for (const p of JSON.parse(process.argv[1])) new RegExp(p, 'u'); console.log('ok')"
    result = subprocess.run(["node", "-e", script, json.dumps(patterns)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.stdout.strip() == "ok", result.stderr
    assert len(patterns) >= 10


def _mappings(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _mappings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _mappings(item)


def test_published_types_are_what_a_person_writes() -> None:
    schema = inventory_schema()
    assert set(TYPES) <= set(schema["$defs"])
    interval = schema["$defs"]["SqlSource"]["properties"]["interval"]
    assert interval["default"] == "1m"  # not 60.0
    validator = definition(schema, "Duration")
    assert [validator.is_valid(v) for v in ("30s", "1h30m", "250ms", 90, "90", "1 h", 0, "")] == \
        [True, True, True, True, False, False, False, False]


def test_a_caller_changing_the_schema_does_not_change_the_next_one() -> None:
    first, kept = inventory_schema(), inventory_schema()
    for definition in first["$defs"].values():
        definition.clear()
    assert inventory_schema() == kept
