"""`ciliate-cni`: the CNI plugin (spec 1.0; 0.3.x/0.4.0 results too).

ADD: IPAM (delegated to the configured plugin, e.g. host-local; the pod gets
its first address of each family, IPv4, IPv6 or both) -> veth pair into the
pod's netns, wired for each family (addressing.py says how) -> endpoint
registered with the agent with both addresses (which waits until the
endpoint's policy is in the kernel) -> result listing both. Anything failing after
IPAM is rolled back: the endpoint at the agent (it may have registered it
even when its answer never arrived, e.g. a client timeout), the veth and the
IPAM lease, so a failed ADD leaves nothing behind. DEL is idempotent and
tolerates every piece being gone (the veth takes each family's addresses,
routes and neighbour entries with it). CHECK looks for each address
prevResult lists.
Errors are CNI error JSON on stdout with a non-zero exit. Does process,
kernel and socket I/O.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.cni.addressing import plan
from agent.cni.config import (
    SUPPORTED_VERSIONS,
    CniEnv,
    NetConf,
    display_name,
    endpoint_labels,
    endpoint_named_ports,
    host_ifname,
    parse_env,
    parse_netconf,
    parse_version_only,
)
from agent.cni.errors import AGENT_REJECTED, CONTAINER_UNKNOWN, IPAM_FAILED, TRY_AGAIN_LATER, UNEXPECTED, CniError
from agent.cni.ipam import exec_ipam, pod_addresses
from agent.cni.result import build_result


ROLLBACK_TIMEOUT = 10.0


def _client(conf: NetConf, timeout: float | None = None):
    from agent.api.client import AgentClient

    return AgentClient(Path(conf.agent_socket) if conf.agent_socket else None, timeout=timeout or conf.wait_seconds + 10)


def _delete_at_agent(client, env: CniEnv) -> None:
    """Remove this container's endpoint(s) for env.ifname; already gone is fine."""
    from agent.api.client import AgentError

    found = {ep.id: ep for ep in client.endpoints(container_id=env.container_id, ifname=env.ifname)}
    # An endpoint restored from the datapath lost its container id; the host
    # veth's name is derived from (container id, ifname), so it still finds it.
    found.update((ep.id, ep) for ep in client.endpoints(host_ifname=host_ifname(env.container_id, env.ifname)))
    for ep in found.values():
        try:
            client.delete_endpoint(ep.id)
        except AgentError as exc:
            if exc.status != 404:
                raise


def _rollback(conf: NetConf, env: CniEnv, stdin: bytes, environ: Mapping[str, str], host_if: str, at_agent: bool) -> None:
    """Undo a failed ADD, newest step first. Every step is tried; what cannot
    be undone is said on stderr, and the ADD's own error stays the answer."""
    from agent.cni import net as cni_net

    def attempt(what: str, step) -> None:
        try:
            step()
        except Exception as exc:
            print(f"ciliate-cni: rollback: {what} failed: {exc}", file=sys.stderr)

    if at_agent:

        def forget() -> None:
            with _client(conf, ROLLBACK_TIMEOUT) as client:
                _delete_at_agent(client, env)

        attempt("removing the endpoint at the agent", forget)
    attempt(f"deleting {host_if}", lambda: cni_net.remove(host_if))
    attempt("releasing the IPAM lease", lambda: exec_ipam("DEL", stdin, conf.ipam["type"], environ, env.path))


def cmd_add(conf: NetConf, env: CniEnv, stdin: bytes, environ: Mapping[str, str]) -> dict[str, Any]:
    from agent.cni import net as cni_net
    from agent.api.client import AgentError, AgentUnavailable
    from agent.core.models import EndpointCreate

    if not Path(env.netns).exists():
        raise CniError(CONTAINER_UNKNOWN, f"network namespace {env.netns} does not exist (is the container still running?)")
    ipam = pod_addresses(exec_ipam("ADD", stdin, conf.ipam["type"], environ, env.path))
    host_if = host_ifname(env.container_id, env.ifname)
    at_agent = False  # whether the agent may hold an endpoint for this ADD
    try:
        wanted = plan(ipam, conf.mtu)
        wired = cni_net.add(env.netns, env.ifname, host_if, wanted, conf.mtu)
        try:
            with _client(conf) as client:
                at_agent = True  # from the request on, even if no answer comes back
                ep = client.create_endpoint(
                    EndpointCreate(
                        container_id=env.container_id,
                        ifname=env.ifname,
                        host_ifname=host_if,
                        netns=env.netns,
                        ipv4=wanted.ipv4.address if wanted.ipv4 else None,
                        ipv6=wanted.ipv6.address if wanted.ipv6 else None,
                        labels=endpoint_labels(conf, env),
                        name=display_name(env),
                        named_ports=endpoint_named_ports(conf),
                    ),
                    wait=conf.wait_seconds,
                )
        except AgentUnavailable as exc:
            raise CniError(TRY_AGAIN_LATER, str(exc)) from exc
        except AgentError as exc:
            raise CniError(AGENT_REJECTED, f"the agent refused the endpoint: {exc}") from exc
        if ep.state.value != "ready":
            # The pod is wired and the kernel fails closed for it; say why it is not ready yet.
            print(f"ciliate-cni: endpoint {ep.id} is {ep.state.value}: {ep.reason or 'policy not in place yet'}", file=sys.stderr)
    except BaseException:
        _rollback(conf, env, stdin, environ, host_if, at_agent)
        raise
    return build_result(conf.cni_version, wired=wired, plan=wanted, ifname=env.ifname, netns=env.netns)


def cmd_del(conf: NetConf, env: CniEnv, stdin: bytes, environ: Mapping[str, str]) -> None:
    from agent.cni import net as cni_net
    from agent.api.client import AgentError, AgentUnavailable

    agent_error: CniError | None = None
    try:
        with _client(conf) as client:
            _delete_at_agent(client, env)
    except AgentUnavailable as exc:
        agent_error = CniError(TRY_AGAIN_LATER, f"{exc}; the interface was removed, run DEL again once the agent is up")
    except AgentError as exc:
        agent_error = CniError(AGENT_REJECTED, f"the agent refused to remove the endpoint: {exc}")
    cni_net.remove(host_ifname(env.container_id, env.ifname))
    try:
        exec_ipam("DEL", stdin, conf.ipam["type"], environ, env.path)
    except CniError as exc:
        if exc.code != IPAM_FAILED or agent_error is None:
            raise
    if agent_error is not None:
        raise agent_error


def cmd_check(conf: NetConf, env: CniEnv) -> None:
    from agent.cni import net as cni_net

    if not conf.prev_result:
        raise CniError(IPAM_FAILED, "CHECK needs prevResult with the addresses from ADD")
    prev = pod_addresses(conf.prev_result, "prevResult")
    cni_net.check(
        env.netns, env.ifname, host_ifname(env.container_id, env.ifname),
        prev.ipv4.interface.ip if prev.ipv4 else None,  # type: ignore[arg-type]
        prev.ipv6.interface.ip if prev.ipv6 else None,  # type: ignore[arg-type]
    )
    from agent.api.client import AgentUnavailable

    try:
        with _client(conf) as client:
            if not client.endpoints(container_id=env.container_id, ifname=env.ifname):
                raise CniError(AGENT_REJECTED, f"the agent does not know container {env.container_id} ({env.ifname})")
    except AgentUnavailable as exc:
        raise CniError(TRY_AGAIN_LATER, str(exc)) from exc


def run(stdin: bytes, environ: Mapping[str, str]) -> tuple[int, str]:
    """The whole plugin as a function: (exit code, stdout)."""
    version = parse_version_only(stdin)
    try:
        env = parse_env(environ)
        if env.command == "VERSION":
            return 0, json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)})
        conf = parse_netconf(stdin)
        if env.command == "ADD":
            return 0, json.dumps(cmd_add(conf, env, stdin, environ))
        if env.command == "DEL":
            cmd_del(conf, env, stdin, environ)
            return 0, ""
        cmd_check(conf, env)
        return 0, ""
    except CniError as exc:
        return 1, exc.to_json(version)
    except Exception as exc:  # never a traceback on the runtime's stdout
        return 1, CniError(UNEXPECTED, f"unexpected failure: {type(exc).__name__}: {exc}").to_json(version)


def main() -> int:
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    code, out = run(stdin, os.environ)
    if out:
        print(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
