"""What TLS and basic authentication cost a scrape, side by side in one run.

Serves the same app (one SQLite source, sampled once) four ways on loopback ports: plain HTTP;
HTTP with basic auth; HTTPS; HTTPS with basic auth. Then scrapes `/metrics` round-robin over the
four, each on one keep-alive connection (as Prometheus does), `--scrapes` times each, and reports
the median and p95 per way; plus the time of a wrong password (a bcrypt hash at the file's cost,
never remembered) and of a right one the first time (hashed) and after (remembered). Certificates
are made in a temporary directory with openssl.

    .venv/bin/python bench/auth_overhead.py --scrapes 400 --cost 10
"""

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import bcrypt  # noqa: E402
from aiohttp import web  # noqa: E402

from app.service import build_app  # noqa: E402
from app.websecurity import tls_context  # noqa: E402
from collector.inventory.load import load_inventory  # noqa: E402
from collector.inventory.webconfig import WebConfig  # noqa: E402
from tests.app.test_service import make_records, write_inventory  # noqa: E402
from tests.servers import free_port  # noqa: E402
from tests.sources.tls import make_pki  # noqa: E402

USER, PASSWORD = "prometheus", "correct horse"


async def start(directory: Path, config: WebConfig | None, tls: bool) -> tuple[web.AppRunner, int]:
    directory.mkdir()
    make_records(directory / "records.db")
    inventory = load_inventory([write_inventory(directory, directory / "records.db")])
    runner = web.AppRunner(build_app(inventory, web_config=config))
    await runner.setup()
    port = free_port()
    context = tls_context(config.tls_server_config) if tls and config and config.tls_server_config else None
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    return runner, port


async def timed(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    async with session.get(url, headers=headers) as response:
        await response.read()
        assert response.status in (200, 401), response.status
    return time.perf_counter() - started


async def main(scrapes: int, cost: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        pki = make_pki(directory)
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(cost)).decode()
        tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
        ways = {"http": None, "http+auth": WebConfig.model_validate({"basic_auth_users": {USER: hashed}}),
                "https": WebConfig.model_validate({"tls_server_config": tls}),
                "https+auth": WebConfig.model_validate({"tls_server_config": tls, "basic_auth_users": {USER: hashed}})}
        auth = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
        wrong = {"Authorization": "Basic " + base64.b64encode(f"{USER}:guess".encode()).decode()}
        runners, sessions, urls = [], {}, {}
        for name, config in ways.items():
            runner, port = await start(directory / name.replace("+", "-"), config, name.startswith("https"))
            runners.append(runner)
            scheme = "https" if name.startswith("https") else "http"
            urls[name] = f"{scheme}://127.0.0.1:{port}/metrics"
            sessions[name] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=pki.client_context(), limit=1))
        await asyncio.sleep(2)  # the first sample
        try:
            first = await timed(sessions["http+auth"], urls["http+auth"], auth)
            times: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(scrapes):
                for name in ways:
                    times[name].append(await timed(sessions[name], urls[name], auth if "auth" in name else {}))
            failed = [await timed(sessions["http+auth"], urls["http+auth"], wrong) for _ in range(10)]
        finally:
            for session in sessions.values():
                await session.close()
            for runner in runners:
                await runner.cleanup()

    def ms(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {"median_ms": round(statistics.median(ordered) * 1000, 3),
                "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 3)}

    return {"scrapes_each": scrapes, "bcrypt_cost": cost, **{name: ms(v) for name, v in times.items()},
            "right_password_first_ms": round(first * 1000, 3), "wrong_password": ms(failed)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=400)
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the password hash")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.scrapes, args.cost)), indent=2))
