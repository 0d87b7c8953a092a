"""The spotflow-emulator as a real process on 127.0.0.1, and its admin API (used by the tests and
the benchmark).

The reference API has no MQTT port option (the platform always uses 8883), so the emulator's
MQTT-over-TLS listener is on port 8883; its HTTPS listener takes a free port. The SDK trusts the
emulator's CA through ``SSL_CERT_FILE``, as the official SDK does.
"""

import json
import os
import pathlib
import queue
import secrets
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[2]
MQTT_PORT = 8883


def target_dir():
    """Cargo's target directory: CARGO_TARGET_DIR (or the workspace's configuration) when set, as
    `cargo metadata` reports it, else ./target."""
    try:
        out = subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            cwd=REPO, capture_output=True, text=True, check=True, timeout=120,
        ).stdout
        return pathlib.Path(json.loads(out)["target_directory"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return REPO / "target"


def emulator_binary():
    path = os.environ.get("SPOTFLOW_EMULATOR_BIN")
    if path:
        return path
    path = target_dir() / "debug" / "spotflow-emulator"
    if not path.exists():
        subprocess.run(["cargo", "build", "-p", "spotflow-emulator"], cwd=REPO, check=True, timeout=1200)
    return str(path)


def wait_until(predicate, timeout=30.0, what="condition"):
    """Polls `predicate` every 50 ms (bounded by `timeout`); returns its first truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Emulator:
    """A spotflow-emulator process with manual approval of provisioning operations."""

    def __init__(self, data_dir):
        self.data_dir = pathlib.Path(data_dir)
        self.admin_token = secrets.token_hex(16)
        self.https_port = 0
        self.proc = None
        self.ca_path = None
        self.instance = None

    def start(self):
        log = open(self.data_dir.parent / "emulator.log", "ab")
        self.proc = subprocess.Popen(
            [
                emulator_binary(),
                "serve",
                "--data-dir", str(self.data_dir),
                "--https-port", str(self.https_port),
                "--mqtts-port", str(MQTT_PORT),
                "--admin-token", self.admin_token,
                "--record-traffic",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + 30
        while self.ca_path is None or self.instance is None or self.https_port == 0 or not self._ready(lines):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"the emulator did not start; see {self.data_dir.parent / 'emulator.log'}")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if "instance (HTTPS):" in line:
                url = line.split("instance (HTTPS):", 1)[1].strip()
                self.https_port = int(url.rsplit(":", 1)[1])
                self.instance = f"localhost:{self.https_port}"
            elif "CA certificate:" in line:
                self.ca_path = line.split("CA certificate:", 1)[1].strip().split(" ", 1)[0]
            elif "admin token file:" in line:
                self._seen_last = True
        self._context = ssl.create_default_context(cafile=self.ca_path)
        return self

    def _ready(self, _lines):
        return getattr(self, "_seen_last", False)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._seen_last = False

    def restart(self):
        """Stops and starts again on the same data directory and HTTPS port."""
        self.stop()
        return self.start()

    # --- admin API ---
    def admin(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"https://localhost:{self.https_port}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=self._context, timeout=10) as response:
            text = response.read().decode()
        return json.loads(text) if text else None

    def create_provisioning_token(self):
        return self.admin("POST", "/admin/provisioning-tokens", {})["provisioningToken"]

    def operations(self):
        return self.admin("GET", "/admin/operations")

    def approve(self, operation_id, device_id=None):
        return self.admin("POST", f"/admin/operations/{operation_id}/approve", {"deviceId": device_id})["deviceId"]

    def approve_next(self, requested_device_id, device_id=None, timeout=30.0):
        """Waits for a pending operation of `requested_device_id` and approves it; returns its id."""

        def pending():
            for op in self.operations():
                if op.get("requestedDeviceId") == requested_device_id and str(op["state"]).lower() == "pending":
                    return op["id"]
            return None

        op = wait_until(pending, timeout, "a pending provisioning operation")
        self.approve(op, device_id)
        return op

    def set_desired(self, hub_device_id, patch):
        return self.admin("PATCH", f"/admin/devices/{urllib.parse.quote(hub_device_id)}/desired", patch)["version"]

    def twin(self, hub_device_id):
        return self.admin("GET", f"/admin/devices/{urllib.parse.quote(hub_device_id)}/twin")

    def traffic(self):
        """Every recorded HTTP exchange and MQTT packet (the emulator runs with --record-traffic)."""
        out = []
        for _ in range(1000):
            page = self.admin("GET", f"/admin/traffic?from={len(out)}&limit=1000")["records"]
            out.extend(page)
            if len(page) < 1000:
                return out
        raise RuntimeError("traffic listing did not end")

    def messages(self, hub_device_id):
        out, after = [], 0
        for _ in range(1000):
            page = self.admin(
                "GET", f"/admin/messages?device={urllib.parse.quote(hub_device_id)}&afterId={after}&limit=10000"
            )
            if not page:
                return out
            out.extend(page)
            after = page[-1]["id"]
        return out
