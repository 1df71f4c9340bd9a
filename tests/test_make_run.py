"""`make run`, the README's first command, serves the login page."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.smtpserver import unused_port

REPO = Path(__file__).resolve().parent.parent


def test_make_run_serves_login(tmp_path):
    port = unused_port()
    env = {**os.environ, "MESSAGEHUB_INSTANCE_PATH": str(tmp_path / "instance")}
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"PORT={port}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        page = _wait_for_page(f"http://127.0.0.1:{port}/login", process)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()

    assert "Log in to MessageHub" in page
    assert "one-time password: " in output
    assert (tmp_path / "instance" / "messagehub.db").exists()
    assert (tmp_path / "instance" / "secret_key").exists()


def _wait_for_page(url: str, process: subprocess.Popen, timeout: float = 120) -> str:
    # No proxy from the environment: the request must stay on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"make run exited with {process.returncode}: {process.stdout.read().decode()}")
        try:
            with opener.open(url, timeout=2) as response:
                return response.read().decode()
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"nothing answered at {url} within {timeout} s")
