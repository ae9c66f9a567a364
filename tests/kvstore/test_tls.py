"""etcd over TLS with client certificates, configured the way Cilium does
(`etcd.config` YAML): the Cluster works through it, and a client without a
certificate the CA signed is refused."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.etcd_process import etcd_missing_reason
from kvstore import Cluster, KvstoreUnavailable, parse_kvstore_opts
from tests.kvstore.etcd_server import EtcdServer, Pki, make_pki
from tests.kvstore.support import FAST, connected, eventually, node_info

pytestmark = pytest.mark.etcd


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is missing (needed to make test certificates)")
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_etcd(pki: Pki) -> Iterator[EtcdServer]:
    reason = etcd_missing_reason()
    if reason:
        pytest.skip(reason)
    with EtcdServer(pki=pki) as server:
        yield server


def config_file(path: Path, url: str, ca: Path, cert: Path | None, key: Path | None) -> str:
    lines = [f"endpoints: [{url}]", f"trusted-ca-file: {ca}"]
    if cert and key:
        lines += [f"cert-file: {cert}", f"key-file: {key}"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


async def test_cluster_over_tls_with_a_client_certificate(tls_etcd, pki, tmp_path):
    assert tls_etcd.client_url.startswith("https://")
    opts = [f"etcd.config={config_file(tmp_path / 'etcd.yaml', tls_etcd.client_url, pki.ca_crt, pki.client_crt, pki.client_key)}"]
    cluster = Cluster(parse_kvstore_opts(opts), node_info("a"), tmp_path / "a", lambda v: None, **FAST)
    await cluster.start()
    try:
        await eventually(lambda: cluster.connected, what="connected over TLS")
        n = await cluster.allocate_identity(frozenset({"k8s:app=tls"}))
        assert tls_etcd.get_prefix(f"ciliate/state/identities/v1/id/{n}")
    finally:
        await cluster.stop()


async def test_a_client_without_a_certificate_is_refused(tls_etcd, pki, tmp_path):
    opts = [f"etcd.config={config_file(tmp_path / 'etcd.yaml', tls_etcd.client_url, pki.ca_crt, None, None)}"]
    cluster = Cluster(parse_kvstore_opts(opts), node_info("a"), tmp_path / "a", lambda v: None, **FAST)
    await cluster.start()
    try:
        with pytest.raises(KvstoreUnavailable):
            await cluster.allocate_identity(frozenset({"k8s:app=tls"}))
        assert not cluster.connected
        assert not tls_etcd.get_prefix("ciliate/state/")
    finally:
        await cluster.stop()
