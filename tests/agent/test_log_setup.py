"""What `ciliate agent` logs by default, with --debug, and as JSON."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest

from agent.cli import log_setup
from agent.cli.ciliate import main


def _admin_poll() -> None:
    """What the agent does once a second: a request to Envoy's admin API (httpx logs it at info)."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"listener_statuses": []}))
    with httpx.Client(transport=transport, base_url="http://envoy-admin") as client:
        client.get("/listeners")


def test_by_default_state_changes_are_logged_and_per_request_noise_is_not(restore_logging) -> None:
    out = io.StringIO()
    log_setup.configure("info", "text", stream=out)
    _admin_poll()
    logging.getLogger("aiohttp.access").info('127.0.0.1 "GET /v1/healthz HTTP/1.1" 200')
    logging.getLogger("agent.core.agent").info("policy file loaded: /etc/p.yaml")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "policy file loaded" in lines[0] and " INFO agent.core.agent: " in lines[0], lines


def test_debug_lets_every_request_through(restore_logging) -> None:
    out = io.StringIO()
    log_setup.configure("info", "text", debug=True, stream=out)
    _admin_poll()
    assert "GET http://envoy-admin/listeners" in out.getvalue()


def test_json_lines_carry_time_level_logger_message_and_error(restore_logging) -> None:
    out = io.StringIO()
    log_setup.configure("warning", "json", stream=out)
    logging.getLogger("agent").info("not at warning")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("agent").exception("regeneration failed for endpoint %d", 7)
    (line,) = out.getvalue().splitlines()
    doc = json.loads(line)
    assert (doc["level"], doc["logger"], doc["msg"]) == ("error", "agent", "regeneration failed for endpoint 7")
    assert "ValueError: boom" in doc["error"] and doc["time"].endswith("+00:00")


def test_unknown_level_or_format_is_refused_by_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    # The CLI's own main in this process: argparse refuses before the agent does anything.
    for args in (["--log-format", "xml"], ["--log-level", "loud"]):
        with pytest.raises(SystemExit) as exc:
            main(["agent", *args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "invalid choice" in err, err
    with pytest.raises(ValueError, match="log format"):
        log_setup.configure("info", "xml")
