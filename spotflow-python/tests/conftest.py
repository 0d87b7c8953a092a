"""Test fixtures: the spotflow-emulator process (see emulator_process.py) and helpers."""

import os

import pytest

from emulator_process import Emulator, wait_until  # noqa: F401 (wait_until is imported by the tests)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    root = tmp_path_factory.mktemp("emulator")
    emu = Emulator(root / "data").start()
    previous = {k: os.environ.get(k) for k in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    os.environ["SSL_CERT_FILE"] = emu.ca_path
    os.environ.pop("SSL_CERT_DIR", None)
    yield emu
    emu.stop()
    for k, v in previous.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def token(emulator):
    return emulator.create_provisioning_token()


@pytest.fixture
def approver(emulator):
    """A display callback that records the operation and approves it at once."""

    class Approver:
        def __init__(self):
            self.operations = []
            self.device_id = None

        def __call__(self, operation):
            self.operations.append(operation)
            emulator.approve(operation.id, self.device_id)

    return Approver()
