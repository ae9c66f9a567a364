"""Datapath: the one object the agent drives. Does I/O (maps, bcc, tc, netlink).

    dp = Datapath(pin_dir, state_dir)            # creates or adopts the install
    dp.setup_proxy_plumbing()
    dp.attach_endpoint(7, "lxc1234", IPv4Address("10.0.0.7"), 256)
    result = dp.apply(compiled_state)            # ApplyResult; per-endpoint failures inside
    dp.dump_policy(7)                            # list[DecodedEntry]
    async with dp.events() as stream: ...        # FlowEvent
    dp.close()                                   # enforcement stays in the kernel
    dp.teardown()                                # uninstall: programs, plumbing, pins

Everything enforced lives in the kernel (pinned maps, tc filters holding
their programs); the process may exit at any time. A new Datapath on the
same pin_dir and state_dir adopts it: maps are opened from their pins, the
endpoints are read back from state_dir/<id>/endpoint.json, and re-attaching
an endpoint whose filter already runs the current program does nothing.

One program for all endpoints: bpf_lxc.c is compiled once per (program text,
shared config header) and the same program is attached to every endpoint's
veth; it finds its endpoint by skb->ifindex in ciliate_ifindex. The build is
pinned (ciliate_prog_lxc_<hash>_from/to), so a restarted process attaches new
endpoints without compiling either.

Fail closed: a new endpoint runs a two-instruction drop program until its own
program is attached, a compile or load failure leaves (or puts) it on the
drop program, and an endpoint with no lxc or policy map entry drops.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from policy.compiled import HOST_ENDPOINT_ID, CompiledState
from redirect import bpfsys, config, counters, host_connections, layout, loader, policymap, proxy_route, tc, upstream_ports
from redirect.errors import DatapathError, PlumbingError, ProgramLoadError
from redirect.events import EventStream
from redirect.maps import DEFAULT_PIN_DIR, MapSizes, PinnedMaps
from redirect.applied import AppliedMemory
from redirect.reconcile import ApplyResult, apply_state

DEFAULT_STATE_DIR = Path("/var/run/ciliate/endpoints")
BLOCK_NAME = "ciliate_block"
ERROR_FILE = "error.txt"
RECORD_FILE = "endpoint.json"
PLUMBING_FILE = "proxy-plumbing.json"
SHARED_DIR = "datapath"  # the shared config header every program is built from
LO_PRIO = 2004  # our filter's prio on lo, which others may use too
NETDEV_PRIO = 2005  # our filter's prio on the underlay device (cluster mode)


@dataclass(frozen=True)
class EndpointRecord:
    endpoint_id: int
    ifname: str
    ipv4: str  # "" for an IPv6-only endpoint
    identity: int
    program: str  # tc filter name of the program attached, or BLOCK_NAME
    ifindex: int = 0  # of ifname, the key of its ciliate_ifindex entry (0: older record)
    ipv6: str = ""  # "" when it has none (and in records of IPv4-only versions)

    def addresses(self) -> list[IPv4Address | IPv6Address]:
        out: list[IPv4Address | IPv6Address] = []
        if self.ipv4:
            out.append(IPv4Address(self.ipv4))
        if self.ipv6:
            out.append(IPv6Address(self.ipv6))
        return out


@dataclass(frozen=True)
class EndpointStatus:
    endpoint_id: int
    ifname: str
    program: str | None  # what tc has attached right now (None: nothing)
    blocked: bool
    error: str | None


def _digest(header_digest: str, source: Path) -> str:
    return hashlib.sha256((header_digest + loader.flatten(source)).encode()).hexdigest()[:8]


def _as_ip(v: IPv4Address | str | None) -> IPv4Address | None:
    return None if v in (None, "") else IPv4Address(str(v))


def _as_ip6(v: IPv6Address | str | None) -> IPv6Address | None:
    return None if v in (None, "") else IPv6Address(str(v))


class Datapath:
    def __init__(
        self,
        pin_dir: Path = DEFAULT_PIN_DIR,
        state_dir: Path = DEFAULT_STATE_DIR,
        *,
        netns: str | None = None,
        sizes: MapSizes = MapSizes(),
        proxy_addr: IPv4Address = IPv4Address("127.0.0.1"),
        program_source: Path = loader.ENTRY,
    ) -> None:
        self.pin_dir = Path(pin_dir)
        self.state_dir = Path(state_dir)
        self.netns = netns
        self.proxy_addr = proxy_addr
        self.program_source = Path(program_source)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.maps = PinnedMaps(self.pin_dir, sizes)
        self._endpoints: dict[int, EndpointRecord] = {}
        self._programs: dict[str, tuple[int, int]] = {}  # shared program name -> fds held
        self._applied = AppliedMemory()  # what apply() wrote: the next writes the difference
        for rec in self.state_dir.glob(f"*/{RECORD_FILE}"):  # adopt endpoints
            try:
                r = EndpointRecord(**json.loads(rec.read_text()))
            except (ValueError, TypeError) as e:
                raise DatapathError(f"{rec}: unreadable endpoint record: {e}") from e
            self._endpoints[r.endpoint_id] = r

    # -- endpoints ------------------------------------------------------------
    def _ep_dir(self, endpoint_id: int) -> Path:
        return self.state_dir / str(endpoint_id)

    def _prog_pin(self, endpoint_id: int, hook: str) -> Path:
        return self.pin_dir / f"ciliate_prog_{endpoint_id}_{hook}"

    def _save(self, rec: EndpointRecord) -> None:
        d = self._ep_dir(rec.endpoint_id)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (RECORD_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(rec), indent=2))
        tmp.replace(d / RECORD_FILE)
        self._endpoints[rec.endpoint_id] = rec

    def _block(self, endpoint_id: int, ifname: str, link: tc.Netns = None) -> None:
        fd = bpfsys.load_drop_program(BLOCK_NAME)
        try:
            tc.attach(ifname, fd, fd, BLOCK_NAME, link if link is not None else self.netns)
        finally:
            os.close(fd)

    def _shared(self) -> tuple[Path, str]:
        """Write the shared config header; return it and its hash."""
        cfg = config.SharedConfig(self.pin_dir, self.maps.sizes, self.proxy_addr)
        return config.write_shared(cfg, self.state_dir / SHARED_DIR)

    def _shared_pin(self, name: str, hook: str) -> Path:
        return self.pin_dir / f"ciliate_prog_{name.removeprefix('ciliate_')}_{hook}"

    def _program(self, name: str) -> tuple[int, int] | None:
        """fds of the shared program `name`, from this process or its pins;
        None when it has to be compiled."""
        if name in self._programs:
            return self._programs[name]
        pins = [self._shared_pin(name, h) for h in ("from", "to")]
        if not all(p.exists() for p in pins):
            return None
        fds = [bpfsys.obj_get(p) for p in pins]
        self._programs[name] = (fds[0], fds[1])
        return self._programs[name]

    def _compile(self, name: str, header: Path, endpoint_id: int) -> tuple[int, int]:
        """Compile and load the shared program, pin it, and forget pins of
        older builds (endpoints still on them hold them through tc until
        they are re-attached)."""
        prog = loader.compile_and_load(endpoint_id, header, self.program_source)
        try:
            fds = (os.dup(prog.from_container), os.dup(prog.to_container))
        finally:
            prog.close()
        for old in self.pin_dir.glob("ciliate_prog_lxc_*"):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        for hook, fd in zip(("from", "to"), fds):
            bpfsys.pin(fd, self._shared_pin(name, hook))
        self._programs[name] = fds
        return fds

    def attach_endpoint(
        self, endpoint_id: int, ifname: str, ipv4: IPv4Address | str | None, identity: int,
        ipv6: IPv6Address | str | None = None,
    ) -> None:
        """Attach the install's shared program to the endpoint's veth
        (compiling it only if no endpoint has it yet; idempotent). One
        address or both: an IPv6-only endpoint has no IPv4.

        Raises ProgramLoadError (endpoint left blocked) or AttachError."""
        ip4, ip6 = _as_ip(ipv4), _as_ip6(ipv6)
        if ip4 is None and ip6 is None:
            raise DatapathError(f"endpoint {endpoint_id}: no address to attach it by")
        self._applied.forget_endpoint(endpoint_id)
        ip = ip4 or IPv4Address(0)  # ciliate_ifindex's address: 0 matches no IPv4 packet
        ep_dir = self._ep_dir(endpoint_id)
        header, digest = self._shared()
        # The name identifies shared header and program text, so a restart
        # with new datapath code rebuilds instead of adopting the old program.
        name = f"ciliate_lxc_{_digest(digest, self.program_source)}"

        # One netlink socket for the whole attach (tc.session).
        with tc.session(self.netns) as link:
            now = tc.attached(ifname, link)
            if now is None:
                raise DatapathError(f"endpoint {endpoint_id}: interface {ifname} not found")
            ifindex = tc.ifindex(ifname, link)
            config.write_endpoint(config.EndpointConfig(endpoint_id, identity, ip, ifname, ifindex, name, header), ep_dir)

            # Fail closed before anything else: an lxc entry that enforces both
            # directions (apply() sets the real flags), an empty policy map, and
            # the entry by which the shared program finds this endpoint.
            for addr in (ip4, ip6):
                if addr is not None:
                    self.maps.write_lxc(addr, endpoint_id, identity,
                                        layout.LXC_F_INGRESS_ENFORCED | layout.LXC_F_EGRESS_ENFORCED, only_new=True)
            self.maps.policy_fd(endpoint_id)
            self.maps.write_ifindex(ifindex, endpoint_id, ip)
            v4, v6 = str(ip4 or ""), str(ip6 or "")
            record = EndpointRecord(endpoint_id, ifname, v4, identity, name, ifindex, v6)

            fds = self._program(name)
            if fds is not None and now.ingress == name and now.egress == name:
                self._pin_endpoint(endpoint_id, fds)
                self._save(record)
                return  # adopted: same program in place
            if fds is None:
                if now.ingress is None or now.egress is None:
                    self._block(endpoint_id, ifname, link)
                try:
                    fds = self._compile(name, header, endpoint_id)
                except ProgramLoadError as e:
                    self._block(endpoint_id, ifname, link)
                    (ep_dir / ERROR_FILE).write_text(e.message + "\n")
                    self._save(EndpointRecord(endpoint_id, ifname, v4, identity, BLOCK_NAME, ifindex, v6))
                    raise
            tc.attach(ifname, fds[0], fds[1], name, link)
            self._pin_endpoint(endpoint_id, fds)
            with contextlib.suppress(FileNotFoundError):
                (ep_dir / ERROR_FILE).unlink()
            self._save(record)

    def _pin_endpoint(self, endpoint_id: int, fds: tuple[int, int]) -> None:
        """Per-endpoint pins of the (shared) program, for prog_stats."""
        for hook, fd in zip(("from", "to"), fds):
            pin = self._prog_pin(endpoint_id, hook)
            if pin.exists():
                cur = bpfsys.obj_get(pin)
                try:
                    if bpfsys.prog_info(cur).id == bpfsys.prog_info(fd).id:
                        continue
                finally:
                    os.close(cur)
                with contextlib.suppress(FileNotFoundError):
                    pin.unlink()
            bpfsys.pin(fd, pin)

    def detach_endpoint(self, endpoint_id: int) -> None:
        """Remove the endpoint's programs and its map state (idempotent)."""
        self._applied.forget_endpoint(endpoint_id)
        rec = self._endpoints.pop(endpoint_id, None)
        if rec is not None:
            tc.detach(rec.ifname, self.netns)
            for addr in rec.addresses():
                with contextlib.suppress(Exception):
                    self.maps.delete_lxc(addr)
            if rec.ifindex:
                with contextlib.suppress(Exception):
                    self.maps.delete_ifindex(rec.ifindex, endpoint_id)
        for hook in ("from", "to"):
            with contextlib.suppress(FileNotFoundError):
                self._prog_pin(endpoint_id, hook).unlink()
        self.maps.drop_policy_map(endpoint_id)
        shutil.rmtree(self._ep_dir(endpoint_id), ignore_errors=True)

    def endpoints(self) -> dict[int, EndpointRecord]:
        return dict(self._endpoints)

    def link_present(self, endpoint_id: int) -> bool:
        """Is the endpoint's veth still there, the same one it was attached to?
        (A name alone could have been reused by another pod's veth.)"""
        rec = self._endpoints.get(endpoint_id)
        if rec is None:
            return False
        try:
            now = tc.ifindex(rec.ifname, self.netns)
        except DatapathError:
            return False
        return rec.ifindex in (0, now)

    def endpoint_status(self, endpoint_id: int) -> EndpointStatus:
        rec = self._endpoints.get(endpoint_id)
        if rec is None:
            raise DatapathError(f"endpoint {endpoint_id} is not attached")
        now = tc.attached(rec.ifname, self.netns)
        prog = now.ingress if now else None
        err_file = self._ep_dir(endpoint_id) / ERROR_FILE
        return EndpointStatus(
            endpoint_id, rec.ifname, prog, prog in (None, BLOCK_NAME),
            err_file.read_text() if err_file.exists() else None,
        )

    def prog_stats(self, endpoint_id: int) -> dict[str, bpfsys.ProgInfo]:
        """Run-time statistics (needs kernel.bpf_stats_enabled=1 to count)."""
        out: dict[str, bpfsys.ProgInfo] = {}
        for hook in ("from", "to"):
            pin = self._prog_pin(endpoint_id, hook)
            if pin.exists():
                fd = bpfsys.obj_get(pin)
                try:
                    out[hook] = bpfsys.prog_info(fd)
                finally:
                    os.close(fd)
        return out

    # -- policy -------------------------------------------------------------
    def resync(self) -> None:
        """Make the next apply read every map back and compare, as after a
        start (whatever this process believes it wrote)."""
        self._applied.resync()

    def apply(self, state: CompiledState) -> ApplyResult:
        """Reconcile the kernel with `state`: only what changed since the last
        apply, as far as this process wrote it itself (redirect/applied.py)."""
        full, changes, unchanged = self._applied.plan(state)
        res = apply_state(self.maps, state, keep=set(self._endpoints), ipcache_changes=changes, unchanged=unchanged)
        self._applied.recorded(state, res.applied, full)
        return res

    def dump_policy(self, endpoint_id: int, merge_ranges: bool = True) -> list[policymap.DecodedEntry]:
        """The endpoint's kernel policy entries, read back from its map.
        With merge_ranges, adjacent port blocks of one (identity, direction,
        protocol) with the same verdict are shown as one range."""
        entries = [policymap.describe(k, v) for k, v in sorted(self.maps.read_policy(endpoint_id).items())]
        return policymap.merge_ranges(entries) if merge_ranges else entries

    # -- events / proxy / lifecycle ------------------------------------------
    def events(self) -> EventStream:
        return EventStream(self.pin_dir)

    def setup_proxy_plumbing(self) -> None:
        """ip rule + local route for marked packets, and the lo program that
        hands ingress redirects of node/world traffic to the proxy socket.
        Idempotent; an unchanged lo program is adopted, not rebuilt."""
        marker = self.state_dir / PLUMBING_FILE
        first = not marker.exists()
        replaced = proxy_route.setup(self.netns)
        # The rule, route and sysctls are per netns, not per install:
        # remember that this install set them up and what they were, so
        # teardown removes only its own and puts the sysctls back.
        # A sysctl a newer version sets for the first time over an older
        # install's marker: what it replaced was still the node's own value.
        record = {"netns": self.netns, "sysctls": {}} if first else json.loads(marker.read_text())
        missing = {k: v for k, v in replaced.items() if k not in record.setdefault("sysctls", {})}
        if missing:
            record["sysctls"].update(missing)
            marker.write_text(json.dumps(record) + "\n")
        self._attach_lo()

    def _attach_lo(self) -> None:
        header, digest = self._shared()
        name = f"ciliate_lo_{_digest(digest, loader.LO_ENTRY)}"
        now = tc.attached("lo", self.netns, prio=LO_PRIO)
        if now is not None and now.ingress == name:
            return
        fds, module = loader.load_functions(0, header, loader.LO_ENTRY, ("from_lo",))
        try:
            tc.attach("lo", fds["from_lo"], None, name, self.netns, prio=LO_PRIO)
            pin = self.pin_dir / "ciliate_prog_lo"
            with contextlib.suppress(FileNotFoundError):
                pin.unlink()
            bpfsys.pin(fds["from_lo"], pin)
        finally:
            with contextlib.suppress(Exception):
                module.cleanup()  # type: ignore[attr-defined]

    def choose_upstream_ports(
        self, ports: upstream_ports.PortRange, cgroup_root: Path | None = None,
    ) -> upstream_ports.Installed:
        """The proxy's upstreams that keep a client's address take their
        source port from `ports` (bpf/bpf_sock.c), whatever the node's
        ip_local_port_range. Idempotent; raises PlumbingError with the reason."""
        return upstream_ports.install(
            self.maps, self.pin_dir, self.state_dir / SHARED_DIR, ports,
            cgroup_root=cgroup_root, netns=self.netns, header=self._shared(),
        )

    def upstream_port_stats(self) -> upstream_ports.UpstreamStats:
        return upstream_ports.read_stats(self.maps, counters.possible_cpus())

    def attach_netdev(self, ifname: str, host_firewall: bool = False) -> None:
        """The node's device programs (bpf_host.c) on `ifname`: tc ingress
        always (cluster mode's steering of the proxy's cross-node replies),
        and with `host_firewall` both hooks enforce the host endpoint's
        policy there (the device maps to HOST_ENDPOINT_ID in ciliate_ifindex).
        Idempotent; remembered in the plumbing record for teardown."""
        header, digest = self._shared()
        name = f"ciliate_netdev_{_digest(digest, loader.HOST_ENTRY)}"
        now = tc.attached(ifname, self.netns, prio=NETDEV_PRIO)
        if now is None:
            raise PlumbingError(f"device {ifname} not found")
        marker = self.state_dir / PLUMBING_FILE
        record = json.loads(marker.read_text()) if marker.exists() else {"netns": self.netns, "sysctls": {}}
        host_devs = record.setdefault("host_devices", [])
        egress = host_firewall or ifname in host_devs
        if host_firewall:
            # Before the programs: a device they run on is firewalled from
            # their first packet (a host endpoint not enforced yet passes all).
            self.maps.policy_fd(HOST_ENDPOINT_ID)
            self.maps.write_ifindex(tc.ifindex(ifname, self.netns), HOST_ENDPOINT_ID, IPv4Address(0))
        if now.ingress != name or (egress and now.egress != name):
            fds, module = loader.load_functions(0, header, loader.HOST_ENTRY, ("from_netdev", "to_netdev"))
            try:
                tc.attach(ifname, fds["from_netdev"], fds["to_netdev"] if egress else None, name, self.netns, prio=NETDEV_PRIO)
            finally:
                with contextlib.suppress(Exception):
                    module.cleanup()  # type: ignore[attr-defined]
        if ifname not in record.setdefault("netdevs", []):
            record["netdevs"].append(ifname)
        if host_firewall and ifname not in host_devs:
            host_devs.append(ifname)
        marker.write_text(json.dumps(record) + "\n")

    def attach_host_devices(self, devices: list[str]) -> int:
        """Host policies on these devices: their programs, then the node's
        established TCP connections copied into conntrack so a policy that
        would not admit them anew does not cut them (redirect/host_connections.py).
        Returns how many connections were adopted."""
        for dev in devices:
            self.attach_netdev(dev, host_firewall=True)
        return self.adopt_host_connections()

    def adopt_host_connections(self) -> int:
        """Copy the node's established TCP connections into conntrack (see
        redirect/host_connections.py); returns how many were new to it."""
        return host_connections.adopt(self.maps, host_connections.established(self.netns))

    def close(self) -> None:
        """Release this process's handles; the kernel keeps enforcing."""
        self._close_programs()
        self.maps.close()

    def _close_programs(self) -> None:
        for fds in self._programs.values():
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._programs.clear()

    def teardown(self) -> None:
        """Uninstall: detach every endpoint, remove plumbing and all pins."""
        for ep_id in list(self._endpoints):
            self.detach_endpoint(ep_id)
        marker = self.state_dir / PLUMBING_FILE
        if marker.exists():
            record = json.loads(marker.read_text())
            saved = record.get("sysctls", {})
            for ifname in record.get("netdevs", []):
                tc.detach_filter(ifname, NETDEV_PRIO, self.netns)
                with contextlib.suppress(Exception):
                    self.maps.delete_ifindex(tc.ifindex(ifname, self.netns), HOST_ENDPOINT_ID)
            tc.detach_filter("lo", LO_PRIO, self.netns)
            proxy_route.teardown(self.netns, saved)
            marker.unlink()
        shutil.rmtree(self.state_dir / SHARED_DIR, ignore_errors=True)
        upstream_ports.remove(self.pin_dir, self.state_dir)
        self._close_programs()
        self.maps.close()
        for p in self.pin_dir.glob("ciliate_*"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        with contextlib.suppress(OSError):
            self.pin_dir.rmdir()

    def __enter__(self) -> "Datapath":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
