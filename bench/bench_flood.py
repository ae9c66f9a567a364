"""One pod floods the proxy: what it costs Envoy and the agent's API.

Two parts, each beside its baseline from the same run:

1. Access log ingestion: entries decoded per second by the wire decoder
   (xds/accesslog_wire.py) against envoy-data-plane's betterproto2 classes,
   which the agent used before, on the same 3,000 entries.
2. The agent with the real Envoy on loopback (kernel and compiler faked, as
   tests/agent/test_envoy_hardening.py builds it), default ProxyLimits:
   `/v1/healthz` latency idle (baseline), while N slow-body connections are
   held on one listener, and while Envoy reports all of them closing (the
   access log burst); Envoy's RSS at each step; how many connections the
   per-listener cap closed.

Run as root: .venv/bin/python bench/bench_flood.py [--connections 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from xds import accesslog_wire as wire  # noqa: E402
from xds.accesslog import entry_from_wire  # noqa: E402

SLOW_BODY = b"POST /upload HTTP/1.1\r\nHost: s\r\nContent-Length: 1000000\r\n\r\nfirst bytes"


def _entries(n: int) -> bytes:
    import datetime as dt

    from envoy_data_plane.envoy.config.core.v3 import Address, RequestMethod, SocketAddress
    from envoy_data_plane.envoy.data.accesslog.v3 import (
        AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties, ResponseFlags,
    )
    from envoy_data_plane.envoy.service.accesslog.v3 import StreamAccessLogsMessage, StreamAccessLogsMessageHttpAccessLogEntries

    def addr(ip: str, port: int) -> Address:
        return Address(socket_address=SocketAddress(address=ip, port_value=port))

    entries = [
        HttpAccessLogEntry(
            common_properties=AccessLogCommon(
                downstream_remote_address=addr("10.0.0.3", 30000 + i), downstream_local_address=addr("10.0.0.2", 80),
                upstream_remote_address=addr("10.0.0.2", 80), upstream_cluster="ciliate-original-dst", route_name="r",
                start_time=dt.datetime.now(dt.timezone.utc), response_flags=ResponseFlags(),
            ),
            request=HttpRequestProperties(request_method=RequestMethod.POST, scheme="http", authority="s", path=f"/upload/{i}",
                                          user_agent="curl/7.88", request_id=f"{i:032x}", request_headers_bytes=180),
            response=HttpResponseProperties(response_code=403, response_headers_bytes=90, response_body_bytes=13),
        )
        for i in range(n)
    ]
    return bytes(StreamAccessLogsMessage(http_logs=StreamAccessLogsMessageHttpAccessLogEntries(log_entry=entries)))


def bench_decode(n: int = 3000) -> None:
    from envoy_data_plane.envoy.service.accesslog.v3 import StreamAccessLogsMessage

    data = _entries(n)
    t0 = time.perf_counter()
    msg = StreamAccessLogsMessage.parse(data)
    for e in msg.http_logs.log_entry:
        _ = (e.common_properties.downstream_remote_address, e.request.path, e.response.response_code)
    library = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, raws = wire.stream_message(data)
    for raw in raws:
        entry_from_wire("n", raw)
    ours = time.perf_counter() - t0
    print(f"access log decode, {n} entries: betterproto2 (before) {library * 1e3:.0f} ms ({library / n * 1e6:.0f} us/entry); "
          f"wire decoder (now) {ours * 1e3:.0f} ms ({ours / n * 1e6:.0f} us/entry); {library / ours:.1f}x")


def _rss_mib(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _healthz(api: httpx.AsyncClient, count: int, interval: float = 0.02) -> list[float]:
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        r = await api.get("/v1/healthz")
        out.append((time.perf_counter() - t0) * 1e3)
        assert r.status_code in (200, 503), r.text
        await asyncio.sleep(interval)
    return out


def _fmt(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100) if len(ms) >= 2 else ms * 100
    return f"p50 {statistics.median(ms):6.1f} ms  p99 {q[98]:6.1f} ms  max {max(ms):6.1f} ms"


async def bench_flood(connections: int) -> None:
    from tests.agent.test_envoy_hardening import Node

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, connections * 2 + 1024)), hard))
    root = Path(tempfile.mkdtemp(prefix="cil-b-"))
    node = Node(root)
    node.prepare()
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await node.start()
        pid = node.proxy.supervisor.pid if node.proxy.supervisor else None
        transport = httpx.AsyncHTTPTransport(uds=str(node.state_dir / "agent.sock"))
        async with httpx.AsyncClient(transport=transport, base_url="http://agent", timeout=60) as api:
            idle = await _healthz(api, 100)
            rss_idle = _rss_mib(pid)
            for _ in range(connections):
                try:
                    r, w = await asyncio.open_connection("127.0.0.1", node.proxy_port)
                except OSError:
                    break
                w.write(SLOW_BODY)
                held.append((r, w))
            await asyncio.gather(*(w.drain() for _, w in held), return_exceptions=True)
            await asyncio.sleep(1.0)  # a benchmark may settle; a test may not
            during = await _healthz(api, 100)
            rss_held = _rss_mib(pid)
            async with node.proxy.supervisor.admin_client() as admin:
                stats = (await admin.get("/stats", params={"filter": "connection_limit"})).text
            for _, w in held:
                w.close()
            closing = await _healthz(api, 150)
            rss_after = _rss_mib(pid)
        limited = sum(int(line.rpartition(" ")[2]) for line in stats.splitlines() if line.split(":")[0].endswith("limited_connections"))
        print(f"flood: {len(held)} slow-body connections from one client to one proxy port; cap closed {limited} of them")
        print(f"  /v1/healthz idle (baseline)        {_fmt(idle)}")
        print(f"  /v1/healthz while held             {_fmt(during)}")
        print(f"  /v1/healthz while they close       {_fmt(closing)}")
        print(f"  Envoy RSS: idle {rss_idle:.0f} MiB, held {rss_held:.0f} MiB, after close {rss_after:.0f} MiB")
    finally:
        for _, w in held:
            w.close()
        await node.agent.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=3000)
    args = ap.parse_args()
    bench_decode()
    asyncio.run(bench_flood(args.connections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
