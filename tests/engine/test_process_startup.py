"""Start-up of ``python -m messagehub.engine``: what it loads and the state it leaves."""

from __future__ import annotations

import json
import subprocess
import sys

# Provider SDKs and HTTP clients, which only API campaigns need, and which
# would add to the start-up of every SMTP campaign if the engine imported them.
SDK_PACKAGES = ("boto3", "botocore", "twilio", "sendgrid", "requests", "urllib3")

# Runs the entry point without arguments, which prints the usage and exits 2,
# then reports the exit status and the state of the garbage collector.
RUN_ENTRY_POINT = """
import gc, runpy, sys
sys.argv = ["messagehub.engine"]
try:
    runpy.run_module("messagehub.engine", run_name="__main__")
except SystemExit as exit:
    print(exit.code, gc.isenabled())
"""


def test_entry_point_leaves_collector_on():
    result = subprocess.run([sys.executable, "-c", RUN_ENTRY_POINT], capture_output=True, text=True, check=True)

    assert result.stdout.split() == ["2", "True"]
    assert "usage: python -m messagehub.engine CAMPAIGN_ID" in result.stderr


def test_entry_point_imports_no_provider_sdk():
    code = (
        "import json, runpy, sys; sys.argv = ['messagehub.engine']\n"
        "try:\n    runpy.run_module('messagehub.engine', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    loaded = set(json.loads(result.stdout))
    for package in SDK_PACKAGES:
        assert package not in loaded
