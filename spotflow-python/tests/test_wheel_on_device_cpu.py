"""A wheel for a device CPU (aarch64, armv7l) run where it would run: the Python of a Debian tree of
that architecture under qemu-user (scripts/test-wheel-qemu.sh makes the tree and sets
SPOTFLOW_DEVICE_PYTHON and SPOTFLOW_DEVICE_WHEEL), the emulator on this machine. The reference's
Basic Usage, shortened to a few hundred messages without its sleep, sends to the emulator, which
must have stored every message the script printed.

Without those variables (the ordinary test run, on the build machine's own CPU) there is nothing
foreign to run: skipped.
"""

import json
import os
import pathlib
import shlex
import subprocess
import threading
import zipfile

import pytest

DEVICE_PYTHON = os.environ.get("SPOTFLOW_DEVICE_PYTHON")
DEVICE_WHEEL = os.environ.get("SPOTFLOW_DEVICE_WHEEL")
MESSAGES = 300

pytestmark = pytest.mark.skipif(
    not (DEVICE_PYTHON and DEVICE_WHEEL), reason="run by scripts/test-wheel-qemu.sh for a device CPU's wheel"
)


def test_basic_usage_on_the_device_cpu(emulator, token, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(DEVICE_WHEEL) as wheel:
        wheel.extractall(site)
    example = (pathlib.Path(__file__).parent.parent / "examples" / "basic_usage.py").read_text()
    example = (
        example.replace(
            'provisioning_token="<Your Provisioning Token>", db="spotflow.db")',
            f'provisioning_token="{token}", db="spotflow.db", instance="{emulator.instance}")',
        )
        .replace("for i in range(0, 60):", f"for i in range(0, {MESSAGES}):")
        .replace("time.sleep(5)", "time.sleep(0)")
    )
    assert f"range(0, {MESSAGES})" in example and "time.sleep(0)" in example
    # What the interpreter runs on, and which library it loaded, before the example.
    prologue = (
        "import platform, spotflow_device\n"
        "print('MACHINE', platform.machine(), spotflow_device.spotflow_device.__file__, flush=True)\n"
    )
    script = tmp_path / "basic_usage.py"
    script.write_text(prologue + example)
    approving = threading.Thread(target=emulator.approve_next, args=("my-device",), daemon=True)
    approving.start()
    done = subprocess.run(
        shlex.split(DEVICE_PYTHON) + [str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, SSL_CERT_FILE=emulator.ca_path, PYTHONPATH=str(site)),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    machine = [line for line in done.stdout.splitlines() if line.startswith("MACHINE")][0]
    print(machine)
    expected = os.environ.get("SPOTFLOW_DEVICE_MACHINE")
    if expected:
        assert machine.split()[1] == expected, machine
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == MESSAGES
    ws = [d for d in emulator.admin("GET", "/admin/devices") if d["deviceId"] == "my-device"][0]["workspaceId"]
    stored = [json.loads(m["payload"]) for m in emulator.messages(f"{ws}:my-device")]
    assert stored == printed
