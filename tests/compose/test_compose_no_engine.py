"""`make compose-demo` without a Docker engine says what is missing and how
to start it, instead of docker-compose's Python traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from demo.compose_run import ROOT, engine_problem


def test_no_engine_is_one_line_naming_the_socket_and_how_to_start_one(tmp_path: Path) -> None:
    missing = tmp_path / "docker.sock"
    env = {**os.environ, "DOCKER_HOST": f"unix://{missing}"}
    out = subprocess.run([sys.executable, "-m", "demo.compose_run", "--compose", "docker-compose"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text and str(missing) in text and "dockerd" in text and "DOCKER_HOST" in text, text


def test_an_engine_that_answers_its_ping_is_taken(tmp_path: Path) -> None:
    path = tmp_path / "engine.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        assert engine_problem({"DOCKER_HOST": f"unix://{path}"}) is None
    finally:
        t.join(10)
        server.close()
    assert "Connection refused" in (engine_problem({"DOCKER_HOST": "tcp://127.0.0.1:1"}) or "")
    assert engine_problem({"DOCKER_HOST": "ssh://builder"}) is None, "compose reaches ssh:// hosts its own way"
