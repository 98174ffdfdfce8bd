"""The inventory's `exporters.otlp`: validated with paths, secrets from files, every field described."""

from pathlib import Path

from collector.inventory.exporters import ExportersConfig, OtlpConfig
from collector.inventory.load import load_inventory
from tests.collector.inventory.test_load import GOOD, problems, write


def test_otlp_settings_load_with_a_header_from_a_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "otlp-token"
    secret.write_text("t0ken\n")
    text = GOOD + f"""
exporters:
  otlp:
    endpoint: http://127.0.0.1:4318/v1/metrics
    headers: {{Authorization: "Bearer ${{file:{secret}}}"}}
    interval: 30s
    temporality: delta
"""
    otlp = load_inventory([write(tmp_path, "a.yaml", text)], {}).exporters.otlp
    assert otlp is not None
    assert (otlp.headers, otlp.interval, otlp.temporality) == ({"Authorization": "Bearer t0ken"}, 30.0, "delta")


def test_bad_otlp_settings_name_their_path(tmp_path: Path) -> None:
    text = GOOD + """
exporters:
  otlp: {endpoint: "collector:4318", temporality: sometimes, headres: {}}
"""
    path = write(tmp_path, "a.yaml", text)
    found = problems([path])
    assert any("exporters.otlp.endpoint" in line for line in found), found
    assert any("exporters.otlp.temporality" in line for line in found), found
    assert any("exporters.otlp.headres" in line for line in found), found


def test_the_inventory_without_exporters_has_none() -> None:
    assert ExportersConfig().otlp is None


def test_every_field_is_described() -> None:
    for model in (OtlpConfig, ExportersConfig):
        assert all(field.description for field in model.model_fields.values()), model
