"""Where etcd is and how to talk to it: `EtcdConfig` and the parser of the
agent's repeated `--kvstore-opt key=value` flags (Cilium's option names).

Supported options:
  etcd.endpoints=URL[,URL...]   http://host:port or https://host:port (port
                                defaults to 2379)
  etcd.config=PATH              a YAML file in Cilium's (etcd client's) format:
                                  endpoints: [https://10.0.0.1:2379, ...]
                                  trusted-ca-file: /path/ca.crt
                                  cert-file: /path/client.crt
                                  key-file: /path/client.key
                                relative paths are relative to the YAML file

Rules: endpoints come from exactly one of the two; all endpoints share one
scheme; https needs a CA file; a client certificate needs its key and the
other way round; TLS files with http endpoints are a mistake, not ignored.
Every failure is a KvstoreConfigError naming the option or file, the field
and the reason. The only I/O is reading the YAML file and checking that the
certificate files are readable PEM (at parse time, so the agent fails at
start, not at its first reconnect).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from kvstore.errors import KvstoreConfigError

OPT_ENDPOINTS = "etcd.endpoints"
OPT_CONFIG = "etcd.config"
KNOWN_OPTS = (OPT_ENDPOINTS, OPT_CONFIG)

FILE_ENDPOINTS = "endpoints"
FILE_CA = "trusted-ca-file"
FILE_CERT = "cert-file"
FILE_KEY = "key-file"
KNOWN_FILE_FIELDS = (FILE_ENDPOINTS, FILE_CA, FILE_CERT, FILE_KEY)

DEFAULT_PORT = 2379
SCHEMES = ("http", "https")


@dataclass(frozen=True)
class EtcdConfig:
    """Normalised etcd client settings: endpoints are `scheme://host:port`."""

    endpoints: tuple[str, ...]
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def tls(self) -> bool:
        return self.endpoints[0].startswith("https://")


def parse_kvstore_opts(opts: Sequence[str]) -> EtcdConfig:
    """`--kvstore-opt` values -> EtcdConfig, or KvstoreConfigError."""
    given: dict[str, str] = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        key = key.strip()
        if not sep or not key:
            raise KvstoreConfigError(f"--kvstore-opt {opt!r}: expected key=value")
        if key not in KNOWN_OPTS:
            raise KvstoreConfigError(f"--kvstore-opt {key}: unknown option (supported: {', '.join(KNOWN_OPTS)})")
        if key in given:
            raise KvstoreConfigError(f"--kvstore-opt {key}: given twice")
        given[key] = value.strip()

    endpoints: tuple[str, ...] = ()
    ca = cert = key_file = None
    if OPT_CONFIG in given:
        endpoints, ca, cert, key_file = _read_config_file(given[OPT_CONFIG])
    if OPT_ENDPOINTS in given:
        if endpoints:
            raise KvstoreConfigError(
                f"--kvstore-opt {OPT_ENDPOINTS}: endpoints are also listed in {OPT_CONFIG} "
                f"{given[OPT_CONFIG]} (field {FILE_ENDPOINTS}); give them in one place"
            )
        where = f"--kvstore-opt {OPT_ENDPOINTS}"
        items = [e.strip() for e in given[OPT_ENDPOINTS].split(",")]
        if not any(items):
            raise KvstoreConfigError(f"{where}: missing endpoints (empty value)")
        endpoints = tuple(_endpoint(e, where) for e in items)
    if not endpoints:
        raise KvstoreConfigError(
            f"kvstore: missing endpoints: give --kvstore-opt {OPT_ENDPOINTS}=http://HOST:2379 "
            f"or --kvstore-opt {OPT_CONFIG}=FILE with an {FILE_ENDPOINTS} list"
        )
    where = f"--kvstore-opt {OPT_CONFIG} {given[OPT_CONFIG]}" if OPT_CONFIG in given else f"--kvstore-opt {OPT_ENDPOINTS}"
    schemes = {e.split("://", 1)[0] for e in endpoints}
    if len(schemes) > 1:
        raise KvstoreConfigError(f"{where}: field {FILE_ENDPOINTS}: endpoints mix http and https; use one scheme")
    if schemes == {"https"} and ca is None:
        raise KvstoreConfigError(
            f"{where}: field {FILE_CA}: https endpoints need a CA file (set {FILE_CA} in {OPT_CONFIG})"
        )
    if schemes == {"http"} and (ca or cert or key_file):
        raise KvstoreConfigError(f"{where}: TLS files are set but the endpoints are http; use https endpoints")
    return EtcdConfig(endpoints=endpoints, ca_file=ca, cert_file=cert, key_file=key_file)


def _endpoint(raw: str, where: str) -> str:
    """One endpoint URL -> `scheme://host:port`."""
    if "://" not in raw:
        raise KvstoreConfigError(f"{where}: endpoint {raw!r} has no scheme; give http://HOST:PORT or https://HOST:PORT")
    try:
        url = urlsplit(raw)
        port = url.port
    except ValueError as e:
        raise KvstoreConfigError(f"{where}: endpoint {raw!r} is not a URL: {e}") from None
    if url.scheme not in SCHEMES:
        raise KvstoreConfigError(
            f"{where}: endpoint {raw!r} has scheme {url.scheme or '(none)'!r}, expected http or https"
        )
    if not url.hostname:
        raise KvstoreConfigError(f"{where}: endpoint {raw!r} has no host")
    if url.username or url.password:
        raise KvstoreConfigError(f"{where}: endpoint {raw!r} carries credentials; etcd auth is not supported")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise KvstoreConfigError(f"{where}: endpoint {raw!r} has a path, query or fragment; give scheme://host:port")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return f"{url.scheme}://{host}:{port or DEFAULT_PORT}"


def _read_config_file(raw_path: str) -> tuple[tuple[str, ...], Path | None, Path | None, Path | None]:
    where = f"--kvstore-opt {OPT_CONFIG} {raw_path}"
    if not raw_path:
        raise KvstoreConfigError(f"--kvstore-opt {OPT_CONFIG}: empty path")
    path = Path(raw_path)
    try:
        text = path.read_text()
    except OSError as e:
        raise KvstoreConfigError(f"{where}: unreadable file: {e.strerror or e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KvstoreConfigError(f"{where}: not valid YAML: {e}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise KvstoreConfigError(f"{where}: expected a mapping of fields, got {type(doc).__name__}")
    for field in doc:
        if field not in KNOWN_FILE_FIELDS:
            raise KvstoreConfigError(
                f"{where}: field {field}: unknown field (supported: {', '.join(KNOWN_FILE_FIELDS)})"
            )

    endpoints: tuple[str, ...] = ()
    if FILE_ENDPOINTS in doc:
        raw = doc[FILE_ENDPOINTS]
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(e, str) for e in items):
            raise KvstoreConfigError(f"{where}: field {FILE_ENDPOINTS}: expected a list of URLs")
        if not items:
            raise KvstoreConfigError(f"{where}: field {FILE_ENDPOINTS}: missing endpoints (empty list)")
        endpoints = tuple(_endpoint(e.strip(), f"{where}: field {FILE_ENDPOINTS}") for e in items)

    files: dict[str, Path | None] = {}
    for field in (FILE_CA, FILE_CERT, FILE_KEY):
        value = doc.get(field)
        if value is None or value == "":
            files[field] = None
            continue
        if not isinstance(value, str):
            raise KvstoreConfigError(f"{where}: field {field}: expected a file path")
        p = Path(value)
        if not p.is_absolute():
            p = path.parent / p
        _check_pem(p, f"{where}: field {field}")
        files[field] = p
    if (files[FILE_CERT] is None) != (files[FILE_KEY] is None):
        missing = FILE_KEY if files[FILE_KEY] is None else FILE_CERT
        raise KvstoreConfigError(f"{where}: field {missing}: missing ({FILE_CERT} and {FILE_KEY} go together)")
    return endpoints, files[FILE_CA], files[FILE_CERT], files[FILE_KEY]


def _check_pem(path: Path, where: str) -> None:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KvstoreConfigError(f"{where}: {path} is unreadable: {e.strerror or e}") from None
    if b"-----BEGIN " not in data:
        raise KvstoreConfigError(f"{where}: {path} is not a PEM file")
