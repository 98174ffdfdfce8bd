"""Warnings for ports open beyond this machine without protection (issue 18).

A port bound to a loopback address is reachable only from this machine. Bound to any other
address, `/metrics` and the API tell whoever reaches them the operator's volumes and costs, and
the events port lets whoever reaches it write records that KPIs count. fabwatch serves either way
(a reverse proxy or a firewall may protect it), but says so at start, naming the risk and the fix.
"""

import ipaddress
import logging

from collector.inventory.models import Inventory
from collector.inventory.sources import TmfEventsSource
from collector.inventory.webconfig import WebConfig
from collector.logs import log_event

_LOG = logging.getLogger("fabwatch.service")


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name, brackets allowed) is reachable only from this machine."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


def exposure_risks(host: str, config: WebConfig | None) -> list[str]:
    """What is at risk when the service port listens on `host` with `config` (nothing on loopback)."""
    if is_loopback(host):
        return []
    risks = []
    if config is None or config.tls_server_config is None:
        risks.append("no TLS: metrics, credentials and API answers travel in clear text")
    if config is None or not config.basic_auth_users:
        risks.append("no authentication: anyone who reaches the port reads the metrics and the API "
                     "and can ask for a reload")
    return risks


def events_risks(inventory: Inventory, host: str, port: int) -> list[str]:
    """What is at risk on the events port (or the main port, `host:port`, when events come there)."""
    events = [name for name, source in inventory.sources.items()
              if isinstance(source, TmfEventsSource) and not (source.secret or "").strip()
              and source.sender_auth is None]
    address = inventory.service.events_address
    events_host, events_port = address if address is not None else (host, port)
    tls = inventory.service.events_tls
    if not events or is_loopback(events_host) or (tls is not None and tls.client_ca_file is not None):
        return []
    return [f"{events_host}:{events_port} accepts TMF events for {', '.join(sorted(events))} from any address "
            "that reaches it, without a secret, sender credentials or mutual TLS: anyone there can write "
            "records that the KPIs count"]


def warn_exposure(inventory: Inventory, host: str, port: int, web_config: WebConfig | None) -> None:
    """Log a warning naming each risk of how the service listens, and the hub events that basic
    authentication on the main port would refuse."""
    for risk in exposure_risks(host, web_config):
        log_event(_LOG, "listen_exposed", logging.WARNING, host=host, risk=risk,
                  fix="a web config file (--web.config.file) with tls_server_config and basic_auth_users")
    for risk in events_risks(inventory, host, port):
        log_event(_LOG, "events_exposed", logging.WARNING, risk=risk,
                  fix="set secret or sender_auth on the source, or events_tls with client_ca_file")
    if web_config is not None and web_config.basic_auth_users and inventory.service.events_listen is None:
        for name in (n for n, s in inventory.sources.items() if s.kind == "tmf_events"):
            log_event(_LOG, "events_need_credentials", logging.WARNING, source=name,
                      why="basic authentication covers every path of the main port, and a hub sends none",
                      fix="service.events_listen: receive events on their own port")
