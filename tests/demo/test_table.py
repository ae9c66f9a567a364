"""The table both demos print: what curl shows, including the proxy's 403 body."""

from __future__ import annotations

import io

from demo.scenario import observed_label
from demo.table import Row, curl_view, print_table


def test_a_denied_request_shows_the_403_body_a_user_sees_from_curl() -> None:
    denied = {"status": 403, "body": "Access denied\n"}
    dropped = {"error": "timeout"}
    rows = [
        Row("3", "tiefighter PUT /v1/exhaust-port", "403", observed_label(denied), curl_view(denied)),
        Row("3", "xwing POST /v1/request-landing", "dropped", observed_label(dropped), curl_view(dropped)),
    ]
    out = io.StringIO()
    assert print_table(rows, out) == 0
    text = out.getvalue()
    assert "tiefighter PUT /v1/exhaust-port         403       403       Access denied" in text
    assert "(no answer: timed out)" in text and "2 of 2 requests as expected" in text


def test_a_mismatch_is_counted_and_marked() -> None:
    out = io.StringIO()
    assert print_table([Row("2", "xwing POST /v1/request-landing", "dropped", "200", "Ship landed")], out) == 1
    assert "<-- MISMATCH" in out.getvalue() and "0 of 1 requests as expected" in out.getvalue()
