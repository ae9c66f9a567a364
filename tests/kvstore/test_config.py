"""--kvstore-opt parsing: what is accepted, and errors that name the option
or file, the field and the reason. Pure (temporary files only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvstore import EtcdConfig, KvstoreConfigError, parse_kvstore_opts

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_text(PEM)
    (tmp_path / "not-pem.crt").write_text("hello")
    return tmp_path


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "etcd.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    "opts, endpoints",
    [
        pytest.param(["etcd.endpoints=http://10.0.0.1:2379"], ("http://10.0.0.1:2379",), id="one"),
        pytest.param(["etcd.endpoints=http://a:1, http://b:2"], ("http://a:1", "http://b:2"), id="several"),
        pytest.param(["etcd.endpoints=http://etcd.local"], ("http://etcd.local:2379",), id="default-port"),
        pytest.param(["etcd.endpoints=http://[::1]:2379/"], ("http://[::1]:2379",), id="ipv6-trailing-slash"),
    ],
)
def test_endpoints_option(opts, endpoints):
    assert parse_kvstore_opts(opts) == EtcdConfig(endpoints=endpoints)


def test_config_file_with_tls(pki):
    path = write(
        pki,
        "endpoints:\n- https://10.0.0.1:2379\n- https://10.0.0.2:2379\n"
        "trusted-ca-file: ca.crt\ncert-file: client.crt\nkey-file: " + str(pki / "client.key") + "\n",
    )
    config = parse_kvstore_opts([f"etcd.config={path}"])
    assert config == EtcdConfig(
        endpoints=("https://10.0.0.1:2379", "https://10.0.0.2:2379"),
        ca_file=pki / "ca.crt",  # relative to the YAML file
        cert_file=pki / "client.crt",
        key_file=pki / "client.key",
    )
    assert config.tls


def test_config_file_for_tls_and_endpoints_option(pki):
    path = write(pki, "trusted-ca-file: ca.crt\n")
    config = parse_kvstore_opts([f"etcd.config={path}", "etcd.endpoints=https://h:2379"])
    assert config.endpoints == ("https://h:2379",) and config.ca_file == pki / "ca.crt"


@pytest.mark.parametrize(
    "opts, message",
    [
        pytest.param([], r"missing endpoints", id="nothing"),
        pytest.param(["etcd.endpoints"], r"--kvstore-opt 'etcd.endpoints': expected key=value", id="no-equals"),
        pytest.param(["etcd.endpoint=http://h:2379"], r"--kvstore-opt etcd.endpoint: unknown option \(supported: etcd.endpoints, etcd.config\)", id="unknown-key"),
        pytest.param(["etcd.endpoints="], r"--kvstore-opt etcd.endpoints: missing endpoints", id="empty"),
        pytest.param(["etcd.endpoints=http://a:1", "etcd.endpoints=http://b:1"], r"etcd.endpoints: given twice", id="twice"),
        pytest.param(["etcd.endpoints=ftp://h:2379"], r"etcd.endpoints: endpoint 'ftp://h:2379' has scheme 'ftp', expected http or https", id="scheme"),
        pytest.param(["etcd.endpoints=h:2379"], r"etcd.endpoints: endpoint 'h:2379' has no scheme; give http://HOST:PORT", id="no-scheme"),
        pytest.param(["etcd.endpoints=http://h:99999"], r"etcd.endpoints: endpoint 'http://h:99999' is not a URL", id="bad-port"),
        pytest.param(["etcd.endpoints=http://h:2379/v3"], r"has a path, query or fragment", id="path"),
        pytest.param(["etcd.endpoints=http://u:p@h:2379"], r"carries credentials", id="credentials"),
        pytest.param(["etcd.endpoints=https://h:2379"], r"field trusted-ca-file: https endpoints need a CA file", id="https-without-ca"),
        pytest.param(["etcd.endpoints=http://a:1,https://b:1"], r"endpoints mix http and https", id="mixed"),
    ],
)
def test_bad_options(opts, message):
    with pytest.raises(KvstoreConfigError, match=message):
        parse_kvstore_opts(opts)


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param("endpoints: [http://h:2379]\nusername: root\n", r"field username: unknown field", id="unknown-field"),
        pytest.param("endpoints: []\n", r"field endpoints: missing endpoints \(empty list\)", id="empty-endpoints"),
        pytest.param("endpoints: {a: 1}\n", r"field endpoints: expected a list of URLs", id="endpoints-mapping"),
        pytest.param("endpoints: [tcp://h:1]\n", r"field endpoints: endpoint 'tcp://h:1' has scheme 'tcp'", id="endpoint-scheme"),
        pytest.param("- a\n- b\n", r"expected a mapping of fields, got list", id="not-a-mapping"),
        pytest.param("endpoints: [\n", r"not valid YAML", id="yaml"),
        pytest.param("endpoints: [https://h:1]\ntrusted-ca-file: missing.crt\n", r"field trusted-ca-file: .*missing.crt is unreadable: No such file", id="ca-missing"),
        pytest.param("endpoints: [https://h:1]\ntrusted-ca-file: not-pem.crt\n", r"field trusted-ca-file: .*not-pem.crt is not a PEM file", id="ca-not-pem"),
        pytest.param("endpoints: [https://h:1]\ntrusted-ca-file: ca.crt\ncert-file: client.crt\n", r"field key-file: missing \(cert-file and key-file go together\)", id="cert-without-key"),
        pytest.param("endpoints: [http://h:1]\ntrusted-ca-file: ca.crt\n", r"TLS files are set but the endpoints are http", id="tls-files-with-http"),
        pytest.param("endpoints: [https://h:1]\n", r"field trusted-ca-file: https endpoints need a CA file", id="https-without-ca"),
    ],
)
def test_bad_config_files(pki, text, message):
    path = write(pki, text)
    with pytest.raises(KvstoreConfigError, match=message) as e:
        parse_kvstore_opts([f"etcd.config={path}"])
    assert path in str(e.value)  # the file is named


def test_unreadable_config_file(tmp_path):
    with pytest.raises(KvstoreConfigError, match=r"etcd.config .*nope.yaml: unreadable file: No such file"):
        parse_kvstore_opts([f"etcd.config={tmp_path / 'nope.yaml'}"])
    if os.geteuid() != 0:  # root reads anything
        p = Path(write(tmp_path, "endpoints: [http://h:1]\n"))
        p.chmod(0)
        with pytest.raises(KvstoreConfigError, match="Permission denied"):
            parse_kvstore_opts([f"etcd.config={p}"])


def test_endpoints_in_both_places(pki):
    path = write(pki, "endpoints: [http://a:1]\n")
    with pytest.raises(KvstoreConfigError, match=r"etcd.endpoints: endpoints are also listed in etcd.config .* \(field endpoints\)"):
        parse_kvstore_opts([f"etcd.config={path}", "etcd.endpoints=http://b:1"])
