"""The install outlives its process, is adopted by the next one, refuses what
does not fit, and fails closed when a program cannot be loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from redirect.datapath import BLOCK_NAME, LO_PRIO, Datapath
from redirect.errors import MapFullError, ProgramLoadError
from redirect.maps import MapSizes
from tests.datapath.conftest import ENDPOINT_IDS, IDENTITIES
from tests.datapath.support import EGRESS, INGRESS, TCP, endpoint, rule, state, tcp_flow_passes

pytestmark = pytest.mark.privileged

ROOT = Path(__file__).resolve().parents[2]

# Run in a separate process that exits when done: attach a and b, allow
# a -> b:8080 only, then leave.
CHILD = """
import sys, json
from pathlib import Path
sys.path.insert(0, {root!r})
from redirect.datapath import Datapath
from tests.datapath.support import Ep, endpoint, rule, state, EGRESS, TCP
from tests.kernelnode import Pod
from ipaddress import IPv4Address
a = json.loads(sys.argv[1])
dp = Datapath(Path(a["pin"]), Path(a["state"]), netns=a["netns"])
pods = {{}}
for name, p in a["pods"].items():
    pod = Pod(name, IPv4Address(p["ip"]), {{}}, p["netns"], p["ifname"], 0)
    dp.attach_endpoint(p["id"], p["ifname"], pod.ip, p["identity"])
    pods[name] = Ep(p["id"], p["identity"], pod)
res = dp.apply(state(1, [endpoint(pods["a"], [rule(pods["b"].identity, EGRESS, TCP, 8080)], ingress=False),
                         endpoint(pods["b"], [], ingress=False, egress=False)]))
assert res.ok, res
dp.close()
"""


def _run_child(inst) -> None:
    args = {
        "pin": str(inst.pin_dir),
        "state": str(inst.state_dir),
        "netns": inst.node.netns,
        "pods": {
            n: {"ip": str(p.ip), "netns": p.netns, "ifname": p.host_ifname, "id": ENDPOINT_IDS[n],
                "identity": IDENTITIES[n]}
            for n, p in inst.node.pods.items() if n in ("a", "b")
        },
    }
    proc = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), json.dumps(args)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_enforcement_stays_after_loader_exits_and_next_process_adopts(fresh_install):
    with fresh_install(attach=()) as inst:
        inst.dp.close()  # the child owns the install from here
        _run_child(inst)
        a, b = inst.node.pods["a"], inst.node.pods["b"]
        # Nobody holds the programs or maps open now, only the kernel.
        assert tcp_flow_passes(a, b, 8080, True)
        assert not tcp_flow_passes(a, b, 8081, False)

        # A new process adopts: same header -> no recompile, same program.
        dp = Datapath(inst.pin_dir, inst.state_dir, netns=inst.node.netns)
        inst.dp = dp  # teardown through the adopter
        before = {h: i.id for h, i in dp.prog_stats(ENDPOINT_IDS["a"]).items()}
        assert set(dp.endpoints()) == {ENDPOINT_IDS["a"], ENDPOINT_IDS["b"]}
        dp.attach_endpoint(ENDPOINT_IDS["a"], a.host_ifname, a.ip, IDENTITIES["a"])
        assert {h: i.id for h, i in dp.prog_stats(ENDPOINT_IDS["a"]).items()} == before
        assert [str(e) for e in dp.dump_policy(ENDPOINT_IDS["a"])] == [
            "egress  identity=257      TCP  port=8080        ALLOW"
        ]
        # ...and drives it: the realized state is read back from the maps.
        res = dp.apply(state(2, [endpoint(inst.ep("a"), [rule(257, EGRESS, TCP, 8081)], ingress=False),
                                 endpoint(inst.ep("b"), [], ingress=False, egress=False)]))
        assert (res.written, res.deleted) == (1, 1)
        assert tcp_flow_passes(a, b, 8081, True)
        assert not tcp_flow_passes(a, b, 8080, False)


def test_map_full_is_refused_and_old_entries_stay_enforced(fresh_install):
    with fresh_install(sizes=MapSizes(policy_entries=8)) as inst:
        a, b = inst.ep("a"), inst.ep("b")
        old = state(1, [endpoint(a, [rule(257, EGRESS, TCP, 8080)], ingress=False),
                        endpoint(b, [], ingress=False, egress=False)])
        assert inst.dp.apply(old).ok
        before = inst.dp.dump_policy(a.endpoint_id)
        # 20 single ports to 20 peers: 20 entries > 8.
        too_many = [rule(1000 + i, EGRESS, TCP, 9000 + i) for i in range(20)] + [rule(257, EGRESS, TCP, 8081)]
        res = inst.dp.apply(state(2, [endpoint(a, too_many, ingress=False),
                                      endpoint(b, [rule(256, INGRESS, TCP, 8080)], ingress=False, egress=False)]))
        err = res.failed[a.endpoint_id]
        assert isinstance(err, MapFullError) and err.wanted == 21 and err.capacity == 8
        # The message leaves naming the endpoint to whoever shows it (policy
        # status adds it once); the error carries it.
        assert err.endpoint_id == a.endpoint_id and "kept the previous entries" in str(err)
        assert b.endpoint_id in res.applied  # the others still get their update
        assert inst.dp.dump_policy(a.endpoint_id) == before
        assert tcp_flow_passes(a.pod, b.pod, 8080, True)
        assert not tcp_flow_passes(a.pod, b.pod, 8081, False)
        with pytest.raises(MapFullError):
            res.raise_for_failures()


def test_failed_program_load_leaves_endpoint_blocked(fresh_install, tmp_path):
    broken = tmp_path / "bpf_lxc.c"
    src = (ROOT / "bpf" / "bpf_lxc.c").read_text()
    broken.write_text(src.replace("return TC_ACT_OK;", "return TC_ACT_OK; this_is_not_c;", 1))
    with fresh_install(attach=("b",)) as inst:
        a, b = inst.ep("a"), inst.ep("b")
        inst.dp.program_source = broken
        with pytest.raises(ProgramLoadError) as exc:
            inst.dp.attach_endpoint(a.endpoint_id, a.pod.host_ifname, a.pod.ip, a.identity)
        assert "this_is_not_c" in exc.value.message  # the compiler's own words
        st = inst.dp.endpoint_status(a.endpoint_id)
        assert st.blocked and st.program == BLOCK_NAME and "this_is_not_c" in st.error
        # Even a policy that enforces nothing cannot open a blocked endpoint.
        inst.dp.apply(state(1, [endpoint(a, [], ingress=False, egress=False),
                                endpoint(b, [], ingress=False, egress=False)]))
        assert not tcp_flow_passes(a.pod, b.pod, 8080, False)
        assert not tcp_flow_passes(b.pod, a.pod, 8080, False)


def test_lost_filter_is_restored_from_pins_and_teardown_leaves_nothing(fresh_install):
    from redirect import proxy_route as proxy, tc

    with fresh_install() as inst:
        dp, a, netns = inst.dp, inst.ep("a"), inst.node.netns
        dp.setup_proxy_plumbing()
        lo_prog = tc.attached("lo", netns, prio=LO_PRIO).ingress
        dp.setup_proxy_plumbing()  # idempotent: the lo program is adopted
        assert lo_prog and tc.attached("lo", netns, prio=LO_PRIO).ingress == lo_prog
        prog = dp.prog_stats(a.endpoint_id)["from"].id
        name = tc.attached(a.pod.host_ifname, netns).ingress
        tc.detach(a.pod.host_ifname, netns)  # someone removed the qdisc
        dp.attach_endpoint(a.endpoint_id, a.pod.host_ifname, a.pod.ip, a.identity)
        assert tc.attached(a.pod.host_ifname, netns) == tc.Attached(name, name)
        assert dp.prog_stats(a.endpoint_id)["from"].id == prog  # same program, no rebuild
        dp.attach_endpoint(a.endpoint_id, a.pod.host_ifname, a.pod.ip, a.identity)  # and again: no-op
        assert dp.prog_stats(a.endpoint_id)["from"].id == prog

        dp.teardown()
        assert not inst.pin_dir.exists()
        assert tc.attached(a.pod.host_ifname, netns) == tc.Attached(None, None)
        assert not proxy.is_set_up(netns)
        assert tc.attached("lo", netns, prio=LO_PRIO) == tc.Attached(None, None)
        assert not any(inst.state_dir.iterdir())
