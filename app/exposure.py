"""Warnings for ports open beyond this machine without protection (issue 18).

A port bound to a loopback address is reachable only from this machine. Bound to any other
address, `/metrics` and the API tell whoever reaches them the operator's volumes and costs, and
the events port lets whoever reaches it write records that KPIs count. fabwatch serves either way
(a reverse proxy or a firewall may protect it), but says so at start, naming the risk.
"""

import ipaddress
import logging

from collector.inventory.models import Inventory
from collector.inventory.sources import TmfEventsSource
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


def exposure_warnings(inventory: Inventory, host: str, port: int, *, main_protected: bool = False) -> list[str]:
    """The risks of how `inventory` listens on `host:port` (and its events port), one sentence each."""
    warnings: list[str] = []
    if not is_loopback(host) and not main_protected:
        warnings.append(f"{host}:{port} serves /metrics and the service's pages to any address that reaches it, "
                        "without TLS or authentication: they show the operator's volumes and costs "
                        "(set a web config with TLS or basic auth, or bind to 127.0.0.1 behind a proxy)")
    events = [name for name, source in inventory.sources.items()
              if isinstance(source, TmfEventsSource) and source.secret is None and source.sender_auth is None]
    address = inventory.service.events_address
    events_host, events_port = address if address is not None else (host, port)
    mutual = inventory.service.events_tls is not None and inventory.service.events_tls.client_ca_file is not None
    if events and not is_loopback(events_host) and not mutual:
        warnings.append(f"{events_host}:{events_port} accepts TMF events for {', '.join(sorted(events))} from any "
                        "address that reaches it, without a secret, sender credentials or mutual TLS: anyone there "
                        "can write records that the KPIs count (set secret or sender_auth, or events_tls with "
                        "client_ca_file)")
    return warnings


def warn_exposure(inventory: Inventory, host: str, port: int, *, main_protected: bool = False) -> None:
    """Log each risk of `exposure_warnings` at warning level."""
    for risk in exposure_warnings(inventory, host, port, main_protected=main_protected):
        log_event(_LOG, "exposed_without_protection", logging.WARNING, risk=risk)
