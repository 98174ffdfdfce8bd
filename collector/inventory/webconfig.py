"""The web configuration file of the service port, in the Prometheus exporter-toolkit's format.

The same file Prometheus, Alertmanager and the exporters read with `--web.config.file` (TLS
certificate and key, minimum version, client CA for mutual TLS, `basic_auth_users` with bcrypt
hashes, response headers), so that `promtool check web-config` checks it too. Options the toolkit
has and fabwatch cannot honour (inline PEM, client SAN matching, curve preferences, rate limiting,
client certificates requested without verification) are refused by name, never ignored: a file
that asks for them must not give less protection than it says.
"""

import re
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from collector.inventory.base import Model

TlsVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
ClientAuthType = Literal["NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                         "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]

GO_CIPHER_SUITES: dict[str, str] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
"""Go's names of the TLS 1.2 cipher suites (what the toolkit's `cipher_suites` lists) and OpenSSL's.
TLS 1.3 suites are not configurable, in Go as in OpenSSL's cipher list."""

BCRYPT_HASH = re.compile(r"^\$2[aby]?\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}$")
"""A bcrypt hash as `htpasswd -nBC 10` writes it: `$2y$10$` then 53 characters of salt and digest;
a cost bcrypt can hash at (4 to 31)."""

_UNSUPPORTED_TLS = {
    "cert": "inline PEM is not supported: give cert_file",
    "key": "inline PEM is not supported: give key_file",
    "client_ca": "inline PEM is not supported: give client_ca_file",
    "client_allowed_sans": "matching client certificate SANs is not supported: use a client CA that signs "
                           "only the allowed clients",
    "curve_preferences": "not supported: OpenSSL's default curves are used",
}


class TlsServerConfig(Model):
    """TLS on the service port (`tls_server_config`)."""

    cert_file: str
    """PEM certificate (chain) the service presents."""
    key_file: str
    """PEM private key of `cert_file`."""
    client_auth_type: ClientAuthType = "NoClientCert"
    """Client certificates: `RequireAndVerifyClientCert` for mutual TLS, `VerifyClientCertIfGiven` to
    check one when sent; the two that accept unverified certificates are refused."""
    client_ca_file: str | None = None
    """PEM CA certificates that sign the clients' certificates."""
    min_version: TlsVersion = "TLS12"
    """Lowest TLS version accepted."""
    max_version: TlsVersion = "TLS13"
    """Highest TLS version accepted."""
    cipher_suites: tuple[str, ...] = ()
    """TLS 1.2 cipher suites by their Go names (empty: OpenSSL's defaults)."""
    prefer_server_cipher_suites: bool = True
    """Choose the cipher in the server's order of `cipher_suites`, not the client's."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: object) -> object:
        if isinstance(data, dict):
            for key, why in _UNSUPPORTED_TLS.items():
                if data.get(key):
                    raise ValueError(f"{key}: {why}")
        return data

    @field_validator("client_auth_type")
    @classmethod
    def _verified_only(cls, value: str) -> str:
        if value in ("RequestClientCert", "RequireAnyClientCert"):
            raise ValueError(f"{value} accepts certificates nobody verified: use RequireAndVerifyClientCert "
                             "(mutual TLS) or VerifyClientCertIfGiven, with client_ca_file")
        return value

    @field_validator("cipher_suites")
    @classmethod
    def _known_suites(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in GO_CIPHER_SUITES]
        if unknown:
            raise ValueError(f"unknown TLS 1.2 cipher suites: {', '.join(unknown)}; "
                             f"known: {', '.join(GO_CIPHER_SUITES)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "TlsServerConfig":
        if self.client_auth_type != "NoClientCert" and self.client_ca_file is None:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file")
        if self.client_ca_file is not None and self.client_auth_type == "NoClientCert":
            raise ValueError("client_ca_file is given but client_auth_type is NoClientCert: set "
                             "RequireAndVerifyClientCert for mutual TLS")
        if self.min_version > self.max_version:
            raise ValueError(f"min_version {self.min_version} is above max_version {self.max_version}")
        return self


XFrameOptions = Annotated[str, StringConstraints(pattern=r"^(?i:deny|sameorigin)$")]
NoSniff = Annotated[str, StringConstraints(pattern=r"^(?i:nosniff)$")]


class ResponseHeaders(Model):
    """Headers added to every response (`http_server_config.headers`); blank ones are not sent."""

    content_security_policy: str = Field("", alias="Content-Security-Policy")
    """`Content-Security-Policy` of every response."""
    x_frame_options: XFrameOptions | Literal[""] = Field("", alias="X-Frame-Options")
    """`X-Frame-Options`: deny or sameorigin."""
    x_content_type_options: NoSniff | Literal[""] = Field("", alias="X-Content-Type-Options")
    """`X-Content-Type-Options`: nosniff."""
    x_xss_protection: str = Field("", alias="X-XSS-Protection")
    """`X-XSS-Protection` of every response."""
    strict_transport_security: str = Field("", alias="Strict-Transport-Security")
    """`Strict-Transport-Security` (with care: browsers then insist on HTTPS for the whole host)."""

    def items(self) -> dict[str, str]:
        """The headers to send, by their HTTP names."""
        return {info.alias or name: value for name, info in type(self).model_fields.items()
                if (value := getattr(self, name))}


class HttpServerConfig(Model):
    """HTTP options (`http_server_config`)."""

    http2: bool = True
    """Accepted for compatibility; the service speaks HTTP/1.1, which every HTTP/2 client falls back to."""
    headers: ResponseHeaders = ResponseHeaders()
    """Headers added to every response."""


class WebConfig(Model):
    """The service port's web configuration file (exporter-toolkit format)."""

    tls_server_config: TlsServerConfig | None = None
    """TLS on the service port (none: plain HTTP)."""
    http_server_config: HttpServerConfig = HttpServerConfig()
    """HTTP options: response headers."""
    basic_auth_users: dict[Annotated[str, StringConstraints(min_length=1, pattern=r"^[^:]+$")], str] = {}
    """User name to bcrypt hash of the password; none: no basic authentication."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_rate_limit(cls, data: object) -> object:
        if isinstance(data, dict) and "rate_limit" in data:
            raise ValueError("rate_limit is not supported: put a proxy in front of fabwatch to limit requests")
        return data

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(user for user, hashed in value.items() if not BCRYPT_HASH.match(hashed))
        if bad:  # never quote the value: a plain password written by mistake would be shown
            raise ValueError(f"not a bcrypt hash (make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`) "
                             f"for user(s): {', '.join(bad)}")
        return value
