"""Shared helpers for the policy tests: load YAML text, build endpoints from
trace SPECs, and ask the same trace() the CLI asks."""

from __future__ import annotations

from ipaddress import IPv4Address

from policy.compiled import CompiledState, Protocol
from policy.compiler import compile_state
from policy.endpoint import Endpoint
from policy.load import load_text
from policy.model import Policy
from policy.trace import HTTPRequest, Party, TraceResult, parse_party, trace


def policies(text: str, source: str = "test.yaml") -> list[Policy]:
    res = load_text(text, source)
    assert not res.errors, [str(e) for e in res.errors]
    return res.policies


def party(spec: str, ep_id: int, endpoints: list[Endpoint]) -> Party:
    kind, value = parse_party(spec)
    if kind == "labels":
        endpoints.append(Endpoint(ep_id, value, IPv4Address(f"192.168.0.{ep_id}")))
        return Party.endpoint(ep_id)
    if kind == "ip":
        return Party.address(value)
    return Party.entity(value)


def run_trace(
    text: str,
    src: str,
    dst: str,
    port: int,
    proto: Protocol = Protocol.TCP,
    http: HTTPRequest | None = None,
    extra: list[Endpoint] = (),  # type: ignore[assignment]
    host_ips: tuple[IPv4Address, ...] = (),
    sni: str | None = None,
) -> tuple[TraceResult, CompiledState]:
    eps: list[Endpoint] = list(extra)
    s = party(src, 101, eps)
    d = party(dst, 102, eps)
    state = compile_state(policies(text), eps, host_ips=host_ips)
    return trace(state, s, d, port, proto, http, sni), state


def get(method: str, path: str, host: str = "", **headers: str) -> HTTPRequest:
    return HTTPRequest(method, path, host, {k.replace("_", "-"): v for k, v in headers.items()})


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`ciliate ARGV` in process: (exit code, stdout, stderr); never a traceback."""
    from agent.cli import main

    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        code = int(e.code or 0)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out, out.err
