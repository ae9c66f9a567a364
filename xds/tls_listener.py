"""The TLS SNI listener: one per proxy port whose rules are serverNames.
Pure; no I/O.

The connection is never decrypted. Its listener filters read the TLS
ClientHello (tls_inspector, which only peeks: the bytes stay in the socket)
and, like HTTP listeners, may keep the client's address upstream
(original_src). Its filter chain, after the connection limit every listener
has:

1. a network RBAC filter whose policies AND the peer (as the HTTP RBAC does
   per direction: downstream source principals on ingress, destination
   permissions on egress) with the server names the rules allow
   (`requested_server_name`); audit mode makes them shadow rules;
2. on egress listeners, a second network RBAC filter for the local
   receivers' ingress rules this listener must also enforce
   (policy.compiled.ReceiverRules; the kernel sends the flow through this
   one proxy only);
3. set_filter_state, handing the ORIGINAL_DST cluster its destination: the
   accepted socket's local address (the original destination the datapath
   preserved; the stock original_dst listener filter cannot restore it, see
   render.OriginalDst);
4. tcp_proxy to that cluster, which connects upstream only once the client's
   first bytes arrived (upstream_connect_mode ON_DOWNSTREAM_DATA), that is,
   after the RBAC filters judged the connection: Envoy closes a denied
   connection before anything reaches the server, not even a TCP handshake.
   The cost: on an SNI port the client must speak first, as TLS clients do.
"""

from __future__ import annotations

from envoy_data_plane.envoy.extensions.filters.network.tcp_proxy.v3 import UpstreamConnectMode

from policy.compiled import Direction

from . import messages as pb
from .limits import ProxyLimits
from .listener import ListenerFilter, listener, network_filter
from .rbac import RECEIVER_RBAC_FILTER, RECEIVER_SHADOW_PREFIX
from .serialize import any_

TLS_INSPECTOR_FILTER = "envoy.filters.listener.tls_inspector"
TLS_INSPECTOR_URL = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
# The name is also the dynamic metadata namespace of the shadow verdicts.
NETWORK_RBAC_FILTER = "envoy.filters.network.rbac"
NETWORK_RBAC_URL = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
SET_FILTER_STATE_FILTER = "envoy.filters.network.set_filter_state"
SET_FILTER_STATE_URL = "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
TCP_PROXY_URL = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
# Filter state the ORIGINAL_DST cluster reads its destination from, before
# any header or restored local address.
ORIGINAL_DST_STATE = "envoy.network.transport_socket.original_dst_address"
# Production: where the connection was headed (see the module docstring).
DOWNSTREAM_LOCAL_ADDRESS = "%DOWNSTREAM_LOCAL_ADDRESS%"


def _tls_inspector() -> bytes:
    return ListenerFilter.name(TLS_INSPECTOR_FILTER) + ListenerFilter.typed_config(any_(TLS_INSPECTOR_URL, b""))


def _rbac(name: str, stat_prefix: str, rules: bytes, shadow_prefix: str = "") -> bytes:
    """`rules`: the `rules`/`shadow_rules` fields (rbac.rbac_rules or
    rbac.receiver_rules with config=pb.NetworkRbac)."""
    config = pb.NetworkRbac.stat_prefix(stat_prefix) + rules
    if shadow_prefix:
        config += pb.NetworkRbac.shadow_rules_stat_prefix(shadow_prefix)
    return network_filter(name, NETWORK_RBAC_URL, config)


def _original_dst(upstream: str) -> bytes:
    value = pb.FilterStateValue.object_key(ORIGINAL_DST_STATE) + pb.FilterStateValue.format_string(
        pb.SubstitutionFormatString.text_format_source(pb.DataSource.inline_string(upstream))
    )
    return network_filter(SET_FILTER_STATE_FILTER, SET_FILTER_STATE_URL, pb.SetFilterState.on_new_connection(value))


def _tcp_proxy(stat_prefix: str, cluster: str, early_data_bytes: int) -> bytes:
    tcp = pb.TcpProxy
    config = (
        tcp.stat_prefix(stat_prefix)
        + tcp.cluster(cluster)
        + tcp.upstream_connect_mode(UpstreamConnectMode.ON_DOWNSTREAM_DATA)
        # What the client may send before the upstream connection is up
        # (Envoy requires a bound with ON_DOWNSTREAM_DATA).
        + tcp.max_early_data_bytes(early_data_bytes)
    )
    return network_filter(TCP_PROXY_FILTER, TCP_PROXY_URL, config)


def sni_listener(
    *,
    name: str,
    address: str,
    address6: str | None,
    port: int,
    transparent: bool,
    direction: Direction,
    original_port: int | None,
    original_source_mark: int | None,
    limits: ProxyLimits,
    rules: bytes,
    receiver_rules: bytes | None,
    cluster: str,
    upstream: str = DOWNSTREAM_LOCAL_ADDRESS,
) -> bytes:
    """Listener (see listener.listener for the shared arguments). `rules`:
    the network RBAC rules of the listener's own peers and names;
    `receiver_rules`: the receivers' (egress listeners; None for none);
    `upstream`: format string of the destination (production: the accepted
    socket's local address)."""
    stat = f"ciliate_{direction.name.lower()}_{port}"
    filters = [_rbac(NETWORK_RBAC_FILTER, stat, rules)]
    if receiver_rules is not None:
        filters.append(_rbac(RECEIVER_RBAC_FILTER, f"{stat}_receivers", receiver_rules, RECEIVER_SHADOW_PREFIX))
    filters.append(_original_dst(upstream))
    filters.append(_tcp_proxy(stat, cluster, limits.connection_buffer_bytes))
    return listener(
        name=name,
        address=address,
        address6=address6,
        port=port,
        transparent=transparent,
        direction=direction,
        original_port=original_port,
        original_source_mark=original_source_mark,
        limits=limits,
        filters=tuple(filters),
        listener_filters=(_tls_inspector(),),
    )
