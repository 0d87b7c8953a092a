"""Every ```python block of the user guide (spotflow-device/guide/*.md), run as a script against the
emulator process, as a reader would run it: SPOTFLOW_PROVISIONING_TOKEN, SPOTFLOW_INSTANCE and
SSL_CERT_FILE set as the guide says, in an empty directory. The operation a block's device waits
on is approved by this test; the block must exit 0 within its time and leave its messages stored."""

import os
import pathlib
import re
import subprocess
import sys
import threading

import pytest

GUIDE = pathlib.Path(__file__).resolve().parents[2] / "spotflow-device" / "guide"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def guide_blocks():
    for chapter in sorted(GUIDE.glob("*.md")):
        text = chapter.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            yield pytest.param(match.group(1), id=f"{chapter.name}:{line}")


def test_the_guide_has_python_blocks():
    assert len(list(guide_blocks())) >= 2, f"the Python blocks of {GUIDE} were not found"


@pytest.mark.parametrize("code", list(guide_blocks()))
def test_a_python_block_of_the_guide_runs_against_the_emulator(code, emulator, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ)
    env.update(
        SPOTFLOW_PROVISIONING_TOKEN=emulator.create_provisioning_token(),
        SPOTFLOW_INSTANCE=emulator.instance,
        SSL_CERT_FILE=emulator.ca_path,
    )
    env.pop("SSL_CERT_DIR", None)
    # Approve every operation that appears while the block runs (bounded by the block's time).
    done = threading.Event()

    def approve_pending():
        while not done.wait(0.1):
            for op in emulator.operations():
                if str(op["state"]).lower() == "pending":
                    try:
                        emulator.approve(op["id"])
                    except Exception:  # approved meanwhile by an earlier round
                        pass

    approver = threading.Thread(target=approve_pending, daemon=True)
    approver.start()
    try:
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        done.set()
        approver.join(timeout=10)
    assert result.returncode == 0, f"the block failed:\n{code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    devices = re.findall(r'device_id="([^"]+)"', code)
    assert devices, "a guide block names its device"
    for device in devices:
        hub_id = next(d["hubDeviceId"] for d in emulator.admin("GET", "/admin/devices") if d["hubDeviceId"].endswith(":" + device))
        assert emulator.messages(hub_id), f"{device} sent nothing the emulator stored"
