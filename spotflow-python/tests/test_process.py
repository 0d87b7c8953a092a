"""Behaviour that needs a real Python process: Ctrl+C, the GIL while blocked, interpreter exit."""

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

from spotflow_device import DeviceClient

from emulator_process import wait_until

CHILD_PRELUDE = """
import sys, threading, time
from spotflow_device import DeviceClient
token, db, instance = sys.argv[1], sys.argv[2], sys.argv[3]

def ticker():
    # Runs only if the blocked call released the GIL.
    for i in range(10_000):
        print("TICK", i, flush=True)
        time.sleep(0.05)

def blocked(call):
    threading.Thread(target=ticker, daemon=True).start()
    try:
        call()
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        sys.exit(3)
    print("RETURNED", flush=True)
"""


class Child:
    def __init__(self, body, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(body), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(l.rstrip("\n")) for l in self.proc.stdout], daemon=True).start()

    def wait_line(self, predicate, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if predicate(line):
                return line
        self.proc.kill()
        raise AssertionError(f"child did not print the expected line; stderr: {self.proc.stderr.read()}")

    def interrupt(self):
        """Sends SIGINT; returns (exit code, seconds until the process ended)."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("the child ignored Ctrl+C for 10 s")
        return code, time.monotonic() - sent


def registered(emulator, token, approver, db, device_id):
    """Provisions `device_id` with the database `db` (so that a child process starts at once)."""
    with DeviceClient.start(device_id, token, str(db), emulator.instance, approver):
        pass


def run_script(script, token, db, emulator):
    """Runs `script` in a new interpreter with argv = token, db, instance; returns the result."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), token, str(db), emulator.instance],
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_interrupted_promptly(child):
    child.wait_line(lambda l: l.startswith("TICK 3"))  # other Python threads run meanwhile
    code, elapsed = child.interrupt()
    stderr = child.proc.stderr.read()
    assert code == 3, f"exit code {code}; stderr: {stderr}"
    assert "panic" not in stderr.lower(), stderr
    # "Within a second" (the wait wakes up every 100 ms); bounded loosely for a loaded machine.
    assert elapsed < 3.0, f"Ctrl+C took {elapsed:.2f} s"
    print(f"Ctrl+C handled in {elapsed * 1000:.0f} ms")


def test_ctrl_c_interrupts_start_waiting_for_approval(emulator, token, tmp_path):
    child = Child(
        """
        blocked(lambda: DeviceClient.start("py-ctrl-c-start", token, db, instance))
        """,
        token, tmp_path / "i.db", emulator.instance,
    )
    child.wait_line(lambda l: l.startswith("Verification Code:"))
    assert_interrupted_promptly(child)
    # The interrupted start released the database file.
    emulator_op = [o for o in emulator.operations() if o.get("requestedDeviceId") == "py-ctrl-c-start"]
    assert len(emulator_op) == 1


def test_ctrl_c_interrupts_waiting_for_acknowledgements(emulator, token, approver, tmp_path):
    db = tmp_path / "w.db"
    registered(emulator, token, approver, db, "py-ctrl-c-wait")
    emulator.stop()  # no platform: nothing is ever acknowledged
    try:
        for call in ["client.wait_enqueued_messages_sent()", "sender.send_message('never acknowledged')"]:
            child = Child(
                f"""
                client = DeviceClient.start("py-ctrl-c-wait", token, db, instance)
                sender = client.create_stream_sender()
                sender.enqueue_message("queued")
                blocked(lambda: {call})
                """,
                token, db, emulator.instance,
            )
            assert_interrupted_promptly(child)
    finally:
        emulator.start()
    # Everything enqueued before the interrupts is still delivered.
    with DeviceClient.start("py-ctrl-c-wait", token, str(db), emulator.instance, approver) as client:
        client.wait_enqueued_messages_sent()
        hub = f"{client.workspace_id}:{client.device_id}"
    payloads = [m["payload"] for m in emulator.messages(hub)]
    assert payloads.count("queued") == 2 and payloads.count("never acknowledged") == 1


def test_interpreter_exit_closes_the_client(emulator, token, approver, tmp_path):
    db = tmp_path / "exit.db"
    registered(emulator, token, approver, db, "py-exit")
    done = run_script(
        """
        import sys
        from spotflow_device import DeviceClient
        client = DeviceClient.start("py-exit", sys.argv[1], sys.argv[2], sys.argv[3])
        sender = client.create_stream_sender()
        for i in range(100):
            sender.enqueue_message(f"before exit {i}")
        print("ENQUEUED", flush=True)
        # No close(): the interpreter's exit closes the client.
        """,
        token, db, emulator,
    )
    assert done.returncode == 0, done.stderr
    assert "ENQUEUED" in done.stdout
    assert "Exception ignored" not in done.stderr and "panic" not in done.stderr.lower(), done.stderr
    # The database file was released, and every message is delivered exactly once.
    with DeviceClient.start("py-exit", token, str(db), emulator.instance, approver) as client:
        client.wait_enqueued_messages_sent()
        hub = f"{client.workspace_id}:{client.device_id}"
    assert [m["payload"] for m in emulator.messages(hub)] == [f"before exit {i}" for i in range(100)]


def test_the_reference_logging_snippet_shows_the_sdk_events(emulator, token, approver, tmp_path):
    db = tmp_path / "log.db"
    registered(emulator, token, approver, db, "py-log-snippet")
    done = run_script(
        """
        import logging
        import sys

        logging.basicConfig()
        logging.getLogger().setLevel(logging.DEBUG)

        from spotflow_device import DeviceClient
        with DeviceClient.start("py-log-snippet", sys.argv[1], sys.argv[2], sys.argv[3]) as client:
            client.create_stream_sender().send_message("logged")
        """,
        token, db, emulator,
    )
    assert done.returncode == 0, done.stderr
    assert "INFO:spotflow_device:device client started" in done.stderr, done.stderr
    assert "spotflow_device:connected to the platform" in done.stderr, done.stderr
    assert token not in done.stderr
