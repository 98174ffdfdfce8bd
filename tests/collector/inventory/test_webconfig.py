"""The web config file of the service port: exporter-toolkit's format, read the way promtool reads it."""

import subprocess
from pathlib import Path

import bcrypt
import pytest
import yaml

from collector.inventory.load import ConfigError, load_web_config
from collector.inventory.webconfig import WebConfig

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return path


def test_the_toolkits_own_example_loads(tmp_path: Path) -> None:
    """exporter-toolkit's docs/web-config.yml, less its rate_limit (refused below), and headers."""
    path = _write(tmp_path, """\
tls_server_config:
  cert_file: server.crt
  key_file: server.key
http_server_config:
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
basic_auth_users:
  alice: $2y$10$mDwo.lAisC94iLAyP81MCesa29IzH37oigHC/42V2pdJlUprsJPze
  bob: $2y$10$hLqFl9jSjoAAy95Z/zw8Ye8wkdMBM8c5Bn1ptYqP/AXyV0.oy0S8m
""")
    config = load_web_config(path)
    assert config.tls_server_config is not None
    assert config.tls_server_config.cert_file == "server.crt"
    assert config.tls_server_config.min_version == "TLS12"
    assert sorted(config.basic_auth_users) == ["alice", "bob"]
    assert config.http_server_config.headers.items() == {"X-Frame-Options": "deny",
                                                         "X-Content-Type-Options": "nosniff"}


def test_an_empty_file_asks_for_nothing(tmp_path: Path) -> None:
    assert load_web_config(_write(tmp_path, "")) == WebConfig()


@pytest.mark.parametrize(("text", "message"), [
    ("basic_auth_users: {alice: hunter2}", "not a bcrypt hash"),
    ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequireAnyClientCert, client_ca_file: c}",
     "accepts certificates nobody verified"),
    ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequireAndVerifyClientCert}",
     "needs client_ca_file"),
    ("tls_server_config: {cert_file: a, key_file: b, client_ca_file: c}", "client_auth_type is NoClientCert"),
    ("tls_server_config: {cert_file: a, key_file: b, cipher_suites: [TLS_FAST]}", "unknown TLS 1.2 cipher"),
    ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS13, max_version: TLS12}", "above max_version"),
    ("tls_server_config: {cert_file: a, key_file: b, client_allowed_sans: [x]}", "SANs is not supported"),
    ("tls_server_config: {cert: PEM, key_file: b}", "inline PEM is not supported"),
    ("rate_limit: {interval: 1s, burst: 20}", "rate_limit is not supported"),
    ("http_server_config: {headers: {X-Frame-Options: allow}}", "does not match"),
    ("basic_auth: {alice: x}", "unknown field"),
    ("- a list", "must hold a mapping"),
])
def test_a_file_asking_for_what_cannot_be_honoured_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_web_config(_write(tmp_path, text))
    assert message in str(caught.value)


@pytest.mark.parametrize(("cost", "accepted"), [("03", False), ("04", True), ("10", True), ("31", True),
                                               ("32", False), ("99", False)])
def test_a_bcrypt_cost_outside_4_to_31_is_refused(tmp_path: Path, cost: str, accepted: bool) -> None:
    """bcrypt cannot hash at such a cost: the dummy hash for unknown users failed with a 500, after a
    reload had already applied the new inventory."""
    text = f"basic_auth_users: {{alice: '$2y${cost}${'a' * 53}'}}"
    if accepted:
        assert load_web_config(_write(tmp_path, text)).basic_auth_users
        return
    with pytest.raises(ConfigError, match="not a bcrypt hash"):
        load_web_config(_write(tmp_path, text))


def test_a_plain_password_written_instead_of_its_hash_is_never_quoted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_web_config(_write(tmp_path, "basic_auth_users: {alice: Plain-Pa55word}"))
    assert "alice" in str(caught.value)
    assert "Plain-Pa55word" not in str(caught.value)


def test_promtool_accepts_what_fabwatch_accepts(tmp_path: Path, promtool: str) -> None:
    """The same file for both: fabwatch's reading is the toolkit's, not a dialect of it."""
    from tests.sources.tls import make_pki

    pki = make_pki(tmp_path)
    path = _write(tmp_path, yaml.safe_dump({
        "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                              "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(pki.ca),
                              "min_version": "TLS12", "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]},
        "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}},
        "basic_auth_users": {"prometheus": HASH}}))
    load_web_config(path)
    checked = subprocess.run([promtool, "check", "web-config", str(path)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
