"""The reference API of `spotflow_device`, end to end against the emulator process."""

import inspect
import json
import logging
import os
import pathlib
import subprocess
import sys
import threading
import time
import urllib.error

import pytest

import spotflow_device
from spotflow_device import (
    Compression,
    DesiredProperties,
    DeviceClient,
    ProvisioningOperation,
    SpotflowError,
    StreamSender,
)

from emulator_process import wait_until


def hub_id(client):
    return f"{client.workspace_id}:{client.device_id}"


def start(emulator, token, db, device_id, approver, **kwargs):
    return DeviceClient.start(
        device_id=device_id,
        provisioning_token=token,
        db=str(db),
        instance=emulator.instance,
        display_provisioning_operation_callback=approver,
        **kwargs,
    )


def test_module_exports_the_reference_names():
    for name in ["DeviceClient", "StreamSender", "Compression", "ProvisioningOperation", "DesiredProperties", "SpotflowError"]:
        assert hasattr(spotflow_device, name)
    assert issubclass(SpotflowError, Exception)
    assert [Compression.UNCOMPRESSED, Compression.FASTEST, Compression.SMALLEST_SIZE] == [
        Compression.UNCOMPRESSED,
        Compression.FASTEST,
        Compression.SMALLEST_SIZE,
    ]
    assert int(Compression.UNCOMPRESSED) == 0 and int(Compression.FASTEST) == 1 and int(Compression.SMALLEST_SIZE) == 2
    assert repr(Compression.UNCOMPRESSED) == "<Compression.UNCOMPRESSED: 0>"
    assert Compression.FASTEST != Compression.SMALLEST_SIZE
    assert Compression.UNCOMPRESSED == 0 and Compression.SMALLEST_SIZE == 2
    # Beyond the reference: explicit codecs for receivers that decode them.
    assert int(Compression.LZ4) == 3 and int(Compression.ZSTD) == 4


def test_signatures_are_the_reference_ones():
    def params(f):
        return [
            (p.name, p.default if p.default is not inspect.Parameter.empty else "required")
            for p in inspect.signature(f).parameters.values()
            if p.name != "self"
        ]

    assert params(DeviceClient.start) == [
        ("device_id", "required"),
        ("provisioning_token", "required"),
        ("db", "required"),
        ("instance", None),
        ("display_provisioning_operation_callback", None),
        ("desired_properties_updated_callback", None),
        ("allow_remote_access", False),
        # Beyond the reference: the ports remote access may reach, the device's direct methods,
        # the connection events.
        ("remote_access_ports", None),
        ("direct_method_handlers", None),
        ("connection_event_callback", None),
    ]
    # `inspect` shows literal defaults only: None, which means Compression.UNCOMPRESSED.
    assert params(DeviceClient.create_stream_sender) == [("stream_group", None), ("stream", None), ("compression", None)]
    assert params(DeviceClient.wait_enqueued_messages_sent) == []
    assert params(DeviceClient.get_desired_properties) == []
    assert params(DeviceClient.get_desired_properties_if_newer) == [("version", None)]
    assert params(DeviceClient.update_reported_properties) == [("properties", "required")]
    ids = [("batch_id", None), ("message_id", None), ("batch_slice_id", None), ("chunk_id", None)]
    assert params(StreamSender.send_message) == [("payload", "required")] + ids
    assert params(StreamSender.enqueue_message) == [("payload", "required")] + ids
    assert params(StreamSender.enqueue_batch_completion) == [("batch_id", "required")]
    assert params(StreamSender.enqueue_message_completion) == [("batch_id", "required"), ("message_id", "required")]
    for prop in ["workspace_id", "device_id", "pending_messages_count", "any_pending_reported_properties_updates"]:
        assert getattr(DeviceClient, prop).__doc__, prop
    for cls, fields in [
        (ProvisioningOperation, ["id", "verification_code", "expiration_time"]),
        (DesiredProperties, ["version", "values"]),
    ]:
        for field in fields:
            assert getattr(cls, field).__doc__, f"{cls.__name__}.{field}"


def test_provisioning_with_custom_display_then_telemetry(emulator, token, approver, tmp_path):
    client = start(emulator, token, tmp_path / "device.db", "py-basic", approver)
    try:
        assert len(approver.operations) == 1
        op = approver.operations[0]
        assert isinstance(op, ProvisioningOperation)
        assert op.id and op.verification_code
        assert op.expiration_time.endswith(("Z", "+00:00")) and "T" in op.expiration_time
        assert client.device_id == "py-basic"
        assert client.workspace_id
        sender = client.create_stream_sender()
        assert isinstance(sender, StreamSender)
        sender.enqueue_message("text payload")
        sender.enqueue_message(b"\xff\xfebinary")
        sender.enqueue_message(bytearray(b"from a bytearray"))
        sender.send_message(json.dumps({"temperatureCelsius": 21.5}).encode())
        # send_message returns after this and every earlier message was acknowledged.
        assert client.pending_messages_count == 0
        for i in range(200):
            sender.enqueue_message(f"message {i}")
        client.wait_enqueued_messages_sent()
        assert client.pending_messages_count == 0
        stored = emulator.messages(hub_id(client))
        texts = [m.get("payload") for m in stored]
        assert texts[0] == "text payload"
        assert stored[1]["payloadHex"] == "fffe" + b"binary".hex()
        assert texts[2] == "from a bytearray"
        assert json.loads(texts[3]) == {"temperatureCelsius": 21.5}
        assert texts[4:] == [f"message {i}" for i in range(200)]
        assert all(m["streamGroup"] is None and m["stream"] is None for m in stored)
    finally:
        client.close()


def test_default_display_prints_the_operation(emulator, token, tmp_path, capsys):
    approving = threading.Thread(target=emulator.approve_next, args=("py-default-display",), daemon=True)
    approving.start()
    with DeviceClient.start("py-default-display", token, str(tmp_path / "d.db"), emulator.instance) as client:
        assert client.device_id == "py-default-display"
    approving.join(timeout=30)
    out = capsys.readouterr().out
    assert "Provisioning operation initialized, waiting for approval." in out
    op = [o for o in emulator.operations() if o.get("requestedDeviceId") == "py-default-display"][0]
    assert f"Operation ID: {op['id']}" in out
    assert f"Verification Code: {op['verificationCode']}" in out
    assert "Expiration Time: " in out


def test_technician_overrides_the_device_id(emulator, token, approver, tmp_path):
    approver.device_id = "py-overridden"
    with start(emulator, token, tmp_path / "o.db", None, approver) as client:
        assert client.device_id == "py-overridden"
        client.create_stream_sender().send_message("hello")
        assert [m["payload"] for m in emulator.messages(hub_id(client))] == ["hello"]


def test_streams_ids_completions_and_compression(emulator, token, approver, tmp_path):
    with start(emulator, token, tmp_path / "s.db", "py-streams", approver) as client:
        payload = json.dumps({"values": list(range(200))})
        for compression in [Compression.UNCOMPRESSED, Compression.FASTEST, Compression.SMALLEST_SIZE, None]:
            sender = client.create_stream_sender("sensors", "temperature", compression)
            sender.enqueue_message(payload, batch_id="b1", message_id="m1", batch_slice_id="s1", chunk_id="c1")
        named = client.create_stream_sender(stream_group="sensors", stream="humidity", compression=Compression.FASTEST)
        named.enqueue_message(payload, "b2", "m2")
        named.enqueue_message_completion("b2", "m2")
        named.enqueue_batch_completion("b2")
        group_only = client.create_stream_sender("sensors")
        group_only.send_message("default stream of the group")
        stored = emulator.messages(hub_id(client))
        assert len(stored) == 8
        for m, encoding in zip(stored[:4], [None, "br", "br", None]):
            assert (m["streamGroup"], m["stream"]) == ("sensors", "temperature")
            assert (m["batchId"], m["messageId"], m["batchSliceId"], m["chunkId"]) == ("b1", "m1", "s1", "c1")
            assert m["contentEncoding"] == encoding
            assert m["payload"] == payload
        assert (stored[4]["stream"], stored[4]["batchId"], stored[4]["messageId"], stored[4]["payload"]) == (
            "humidity", "b2", "m2", payload)
        assert stored[5]["completeMessage"] and (stored[5]["batchId"], stored[5]["messageId"]) == ("b2", "m2")
        assert stored[6]["completeBatch"] and stored[6]["batchId"] == "b2"
        assert (stored[7]["streamGroup"], stored[7]["stream"]) == ("sensors", None)


def test_desired_properties_callback_reports_from_inside(emulator, token, approver, tmp_path):
    seen = []
    errors = []
    lock = threading.Lock()
    holder = {}

    def on_desired(desired):
        with lock:
            seen.append((desired.version, dict(desired.values), threading.get_ident()))
        client = holder.get("client")  # the first call may come before `start` returns
        if client is not None:
            try:
                # The whole interface is thread-safe and may be used from the callback.
                client.update_reported_properties({"applied": desired.values.get("interval")})
            except Exception as e:  # recorded, the test fails below
                errors.append(e)

    client = None
    try:
        client = DeviceClient.start("py-desired", token, str(tmp_path / "p.db"), emulator.instance, approver, on_desired)
        holder["client"] = client
        wait_until(lambda: seen, 10, "the initial desired properties callback")
        version = emulator.set_desired(hub_id(client), {"interval": 30, "nested": {"a": [1, 2.5, None, True, "x"]}})
        wait_until(lambda: any(v == version for v, _, _ in seen), 10, "the callback with the new version")
        with lock:
            last = [s for s in seen if s[0] == version][-1]
        assert last[1] == {"interval": 30, "nested": {"a": [1, 2.5, None, True, "x"]}}
        assert last[2] != threading.get_ident(), "the callback runs in a separate thread"
        assert not errors, errors
        wait_until(
            lambda: emulator.twin(hub_id(client))["reported"].get("applied") == 30,
            10,
            "the reported update made from inside the callback",
        )
        current = client.get_desired_properties()
        assert isinstance(current, DesiredProperties)
        assert current.version == version and current.values["interval"] == 30
        assert client.get_desired_properties_if_newer(version) is None
        assert client.get_desired_properties_if_newer(version + 5) is None
        assert client.get_desired_properties_if_newer(version - 1).version == version
        assert client.get_desired_properties_if_newer().version == version
        assert client.get_desired_properties_if_newer(None).version == version
    finally:
        if client:
            client.close()


def test_reported_properties(emulator, token, approver, tmp_path):
    with start(emulator, token, tmp_path / "r.db", "py-reported", approver) as client:
        client.update_reported_properties({"firmware": "1.2.3", "battery": {"level": 0.93, "charging": False}})
        wait_until(lambda: not client.any_pending_reported_properties_updates, 10, "the reported update to be sent")
        reported = emulator.twin(hub_id(client))["reported"]
        assert reported["firmware"] == "1.2.3"
        assert reported["battery"] == {"level": 0.93, "charging": False}
        client.update_reported_properties({"firmware": "2.0.0"})
        wait_until(lambda: not client.any_pending_reported_properties_updates, 10, "the second update")
        reported = emulator.twin(hub_id(client))["reported"]
        assert reported["firmware"] == "2.0.0"
        assert "battery" not in reported, "update_reported_properties replaces the whole document"


def test_offline_start_with_the_stored_registration(emulator, token, approver, tmp_path):
    db = str(tmp_path / "offline.db")
    with start(emulator, token, db, "py-offline", approver) as client:
        client.create_stream_sender().send_message("online")
        hub = hub_id(client)
    emulator.stop()
    try:
        # No platform: the stored registration is enough, messages wait in the database.
        with DeviceClient.start("py-offline", token, db, emulator.instance, approver) as client:
            assert client.device_id == "py-offline"
            sender = client.create_stream_sender()
            for i in range(50):
                sender.enqueue_message(f"offline {i}")
            assert client.pending_messages_count == 50
        assert len(approver.operations) == 1, "no new provisioning"
    finally:
        emulator.start()
    with DeviceClient.start("py-offline", token, db, emulator.instance, approver) as client:
        client.wait_enqueued_messages_sent()
        assert client.pending_messages_count == 0
    assert [m["payload"] for m in emulator.messages(hub)] == ["online"] + [f"offline {i}" for i in range(50)]


def test_bad_arguments(emulator, token, approver, tmp_path):
    with pytest.raises(SpotflowError, match=r"\.db"):
        DeviceClient.start("py-bad", token, str(tmp_path / "spotflow.sqlite"), emulator.instance, approver)
    with pytest.raises(TypeError):
        DeviceClient.start(5, token, str(tmp_path / "a.db"), emulator.instance, approver)
    with pytest.raises(TypeError):
        DeviceClient.start("py-bad", None, str(tmp_path / "a.db"), emulator.instance, approver)
    with pytest.raises(TypeError):
        DeviceClient.start("py-bad", token, str(tmp_path / "a.db"), emulator.instance, "not callable")
    with pytest.raises(TypeError):
        DeviceClient.start("py-bad", token)
    with pytest.raises(SpotflowError, match="instance"):
        DeviceClient.start("py-bad", token, str(tmp_path / "a.db"), "ftp://example.com", approver)
    with pytest.raises(SpotflowError):
        DeviceClient.start("py-bad", "not-a-token", str(tmp_path / "b.db"), emulator.instance, approver)

    with start(emulator, token, tmp_path / "ok.db", "py-bad", approver) as client:
        with pytest.raises(TypeError):
            client.update_reported_properties(["not", "a", "dict"])
        with pytest.raises(TypeError):
            client.update_reported_properties("{}")
        with pytest.raises(SpotflowError, match="JSON"):
            client.update_reported_properties({"value": object()})
        with pytest.raises(SpotflowError, match="JSON"):
            client.update_reported_properties({"value": float("nan")})
        with pytest.raises(TypeError):
            client.create_stream_sender(compression="FASTEST")
        with pytest.raises(SpotflowError, match="stream group"):
            client.create_stream_sender("")
        with pytest.raises(SpotflowError, match="stream"):
            client.create_stream_sender("group", "with\ncontrol character")
        with pytest.raises(TypeError):
            client.get_desired_properties_if_newer("1")
        sender = client.create_stream_sender()
        with pytest.raises(TypeError, match="payload must be str or bytes"):
            sender.enqueue_message(12)
        with pytest.raises(TypeError):
            sender.enqueue_message(None)
        with pytest.raises(TypeError):
            sender.enqueue_message("x", batch_id=1)
        with pytest.raises(SpotflowError):
            sender.enqueue_message(b"x" * (16 * 1024 * 1024 + 1))
        with pytest.raises(SpotflowError, match="message id"):
            sender.enqueue_message("x", message_id="")
        with pytest.raises(TypeError):
            sender.enqueue_batch_completion(None)
        assert client.pending_messages_count == 0
    # A closed client refuses work with a clear error.
    with pytest.raises(SpotflowError, match="closed"):
        sender.enqueue_message("after close")
    with pytest.raises(SpotflowError, match="closed"):
        client.update_reported_properties({"a": 1})


def test_a_database_held_by_a_live_client_is_refused(emulator, token, approver, tmp_path):
    db = str(tmp_path / "locked.db")
    with start(emulator, token, db, "py-locked", approver):
        with pytest.raises(SpotflowError, match="locked.db"):
            start(emulator, token, db, "py-locked", approver)
    # Closed: the file is free again.
    with start(emulator, token, db, "py-locked", approver) as client:
        assert client.device_id == "py-locked"


def test_background_events_reach_the_logging_module(emulator, token, approver, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="spotflow_device")
    with start(emulator, token, tmp_path / "l.db", "py-logging", approver) as client:
        client.create_stream_sender().send_message("logged")
        wait_until(
            lambda: any(r.name == "spotflow_device" and "connected" in r.getMessage() for r in caplog.records),
            10,
            "a 'connected' record from the spotflow_device logger",
        )
    records = [r for r in caplog.records if r.name == "spotflow_device"]
    assert any("registered" in r.getMessage() for r in records)
    assert all(token not in r.getMessage() for r in caplog.records), "the provisioning token is never logged"


def test_callback_exceptions_are_logged_not_raised(emulator, token, approver, tmp_path, caplog):
    def failing(desired):
        raise RuntimeError("callback failure for the test")

    caplog.set_level(logging.ERROR, logger="spotflow_device")
    with start(emulator, token, tmp_path / "e.db", "py-cb-error", approver, desired_properties_updated_callback=failing) as client:
        wait_until(
            lambda: any("callback failure for the test" in r.getMessage() for r in caplog.records),
            10,
            "the logged callback exception",
        )
        client.create_stream_sender().send_message("still works")
    record = [r for r in caplog.records if "callback failure" in r.getMessage()][0]
    assert record.name == "spotflow_device" and record.exc_info is not None


def run_example(emulator, script, text, device_id):
    """Runs `text` as the script `script` in its own Python process while the emulator approves
    `device_id`; returns the finished process (it must succeed)."""
    script.write_text(text)
    approving = threading.Thread(target=emulator.approve_next, args=(device_id,), daemon=True)
    approving.start()
    done = subprocess.run(
        [sys.executable, str(script)], cwd=script.parent, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, SSL_CERT_FILE=emulator.ca_path),
    )
    assert done.returncode == 0, done.stderr
    return done


def test_the_reference_basic_usage_example_runs(emulator, token, tmp_path):
    """The reference's example, unmodified but for the token, the instance and the loop count."""
    example = (pathlib.Path(__file__).parent.parent / "examples" / "basic_usage.py").read_text()
    assert 'provisioning_token="<Your Provisioning Token>", db="spotflow.db")' in example
    assert "for i in range(0, 60):" in example
    example = example.replace(
        'provisioning_token="<Your Provisioning Token>", db="spotflow.db")',
        f'provisioning_token="{token}", db="spotflow.db", instance="{emulator.instance}")',
    ).replace("for i in range(0, 60):", "for i in range(0, 2):")
    done = run_example(emulator, tmp_path / "basic_usage.py", example, "my-device")
    assert "Verification Code:" in done.stdout
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 2
    ws = [d for d in emulator.admin("GET", "/admin/devices") if d["deviceId"] == "my-device"][0]["workspaceId"]
    stored = [json.loads(m["payload"]) for m in emulator.messages(f"{ws}:my-device")]
    assert stored == printed
    assert (tmp_path / "spotflow.db").exists()


def test_durability_from_the_environment(emulator, token, approver, tmp_path, monkeypatch):
    monkeypatch.setenv("SPOTFLOW_DURABILITY", "sometimes")
    with pytest.raises(SpotflowError, match="SPOTFLOW_DURABILITY"):
        start(emulator, token, tmp_path / "d.db", "py-durability", approver)
    monkeypatch.setenv("SPOTFLOW_DURABILITY", "crash-safe")
    with start(emulator, token, tmp_path / "d.db", "py-durability", approver) as client:
        sender = client.create_stream_sender()
        for i in range(100):
            sender.enqueue_message(f"crash-safe {i}")
        client.wait_enqueued_messages_sent()
        assert [m["payload"] for m in emulator.messages(hub_id(client))] == [f"crash-safe {i}" for i in range(100)]


def _published(emulator, hub, stream):
    """(topic, raw payload bytes) of every telemetry PUBLISH of `hub` to `stream`, as on the wire."""
    out = []
    for r in emulator.traffic():
        topic = r.get("topic") or ""
        if r.get("packet") == "publish" and r.get("dir") == "in" and topic.startswith(f"devices/{hub}/messages/events/") \
                and f"stream-name={stream}" in topic:
            p = r["payload"]
            out.append((topic, bytes.fromhex(p["hex"]) if "hex" in p else p["text"].encode()))
    return out


def test_brotli_payloads_are_decoded_by_an_independent_decoder(emulator, token, approver, tmp_path):
    """FASTEST and SMALLEST_SIZE are standard Brotli: Google's decoder (the `brotli` module) reads
    the bytes our SDK put on the wire; LZ4 and ZSTD are the explicit codecs the emulator decodes."""
    import brotli

    payload = json.dumps([{"t": i, "temperatureCelsius": 21.5, "humidityPercent": 50.1} for i in range(50)])
    with start(emulator, token, tmp_path / "br.db", "py-brotli", approver) as client:
        for compression in [Compression.FASTEST, Compression.SMALLEST_SIZE, Compression.LZ4, Compression.ZSTD]:
            client.create_stream_sender(stream="codecs", compression=compression).send_message(payload)
        hub = hub_id(client)
        wire = _published(emulator, hub, "codecs")
        assert len(wire) == 4
        for topic, raw in wire[:2]:
            assert "content-encoding=br" in topic.split("&"), topic
            assert len(raw) < len(payload) // 3
            assert brotli.decompress(raw).decode() == payload
        assert "content-encoding=lz4" in wire[2][0].split("&") and wire[2][1][:4] == b"\x04\x22\x4d\x18"
        assert "content-encoding=zstd" in wire[3][0].split("&") and wire[3][1][:4] == b"\x28\xb5\x2f\xfd"
        stored = emulator.messages(hub)
        assert [m["payload"] for m in stored] == [payload] * 4
        assert [m["contentEncoding"] for m in stored] == ["br", "br", "lz4", "zstd"]
        assert all(m.get("decodeError") is None for m in stored)


def test_the_reference_example_with_fastest_compression_stores_readable_payloads(emulator, token, tmp_path):
    """The reference's example with `compression=Compression.FASTEST`: what the platform stores
    is the JSON the example printed (Brotli on the wire, decoded by the platform)."""
    example = (pathlib.Path(__file__).parent.parent / "examples" / "basic_usage.py").read_text()
    original = 'sender = client.create_stream_sender(stream_group = "default-stream-group", stream = "default-stream")'
    assert original in example
    example = example.replace(
        "from spotflow_device import DeviceClient", "from spotflow_device import Compression, DeviceClient"
    ).replace(original, original[:-1] + ", compression=Compression.FASTEST)").replace(
        'provisioning_token="<Your Provisioning Token>", db="spotflow.db")',
        f'provisioning_token="{token}", db="spotflow.db", instance="{emulator.instance}")',
    ).replace("for i in range(0, 60):", "for i in range(0, 3):").replace("time.sleep(5)", "time.sleep(0)")
    assert 'device_id="my-device"' in example
    example = example.replace('device_id="my-device"', 'device_id="my-fast-device"')
    done = run_example(emulator, tmp_path / "basic_usage_fastest.py", example, "my-fast-device")
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 3
    ws = [d for d in emulator.admin("GET", "/admin/devices") if d["deviceId"] == "my-fast-device"][0]["workspaceId"]
    hub = f"{ws}:my-fast-device"
    stored = emulator.messages(hub)
    assert [json.loads(m["payload"]) for m in stored] == printed
    assert all(m.get("decodeError") is None for m in stored)
    # Compressed where Brotli made the payload smaller, and sent as it is otherwise.
    wire = _published(emulator, hub, "default-stream")
    assert len(wire) == 3
    for (topic, raw), m in zip(wire, stored):
        if "content-encoding=br" in topic.split("&"):
            assert m["contentEncoding"] == "br" and len(raw) < len(m["payload"])
        else:
            assert m["contentEncoding"] is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_client_used_after_fork_raises_instead_of_hanging(emulator, token, approver, tmp_path):
    """The child of os.fork() has none of the client's threads: using the parent's client there
    raises a clear SpotflowError (it used to hang), and the parent's client keeps working."""
    with start(emulator, token, tmp_path / "fork.db", "py-fork", approver) as client:
        sender = client.create_stream_sender(stream="fork")
        sender.send_message("before fork")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what happened through the pipe, then leave at once
            os.close(read)
            try:
                sender.enqueue_message("from the child")
                outcome = "no error"
            except SpotflowError as e:
                outcome = "SpotflowError: " + str(e)
            except BaseException as e:  # noqa: BLE001 (reported to the parent)
                outcome = f"{type(e).__name__}: {e}"
            os.write(write, outcome.encode())
            os._exit(0)
        os.close(write)
        import select
        import signal

        chunks = []
        deadline = time.monotonic() + 30
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([read], [], [], max(remaining, 0))
            if not ready:  # the child hangs: kill it and fail
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the forked child's call did not return within 30 s")
            chunk = os.read(read, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(read)
        _, status = os.waitpid(pid, 0)
        outcome = b"".join(chunks).decode()
        assert outcome.startswith("SpotflowError:") and "os.fork()" in outcome, outcome
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        sender.send_message("after fork")
        assert [m["payload"] for m in emulator.messages(hub_id(client))] == ["before fork", "after fork"]


def test_large_messages_upload_beside_the_stream(emulator, token, approver, tmp_path, monkeypatch):
    """A message over 250,000 bytes is uploaded to the local instance without any setting; with
    SPOTFLOW_UPLOAD_BASE_URL naming a host that is down, the messages behind it still flow."""
    large = os.urandom(300_000)
    with start(emulator, token, tmp_path / "up.db", "py-upload", approver) as client:
        client.create_stream_sender(stream="files").send_message(large)
        stored = emulator.messages(hub_id(client))
        assert len(stored) == 1 and stored[0]["externalized"]
        assert client.refused_messages_count == 0

    monkeypatch.setenv("SPOTFLOW_UPLOAD_BASE_URL", "ftp://example.com")
    with pytest.raises(SpotflowError, match="upload base URL"):
        start(emulator, token, tmp_path / "bad.db", "py-upload-bad", approver)

    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("SPOTFLOW_UPLOAD_BASE_URL", dead)
    with start(emulator, token, tmp_path / "down.db", "py-upload-down", approver) as client:
        sender = client.create_stream_sender(stream="files")
        sender.enqueue_message(large)
        for i in range(20):
            sender.enqueue_message(f"behind {i}".encode())
        hub = hub_id(client)
        wait_until(lambda: len(emulator.messages(hub)) == 20, what="the messages behind the large one")
        wait_until(lambda: client.pending_messages_count == 1, what="only the large message pending")


def test_stats_show_the_queue_deliveries_connection_and_latency(emulator, token, approver, tmp_path):
    from spotflow_device import ClientStats

    with start(emulator, token, tmp_path / "stats.db", "py-stats", approver) as client:
        wait_until(lambda: client.stats.connection == "connected", 10, "the connection")
        s = client.stats
        assert isinstance(s, ClientStats)
        assert (s.queued_messages, s.enqueued_total, s.delivered_total, s.reconnects) == (0, 0, 0, 0)
        assert s.oldest_queued_age is None and s.latency_p50 is None and s.last_connection_error is None
        assert 0 < s.connection_since <= time.time()
        sender = client.create_stream_sender("g", "s")
        for i in range(5):
            sender.enqueue_message(f"m{i}".encode())
        with pytest.raises(SpotflowError):
            sender.enqueue_message(b"x", batch_id="")
        client.wait_enqueued_messages_sent()
        s = client.stats
        assert (s.enqueued_total, s.delivered_total, s.failed_enqueues_total) == (5, 5, 1)
        assert (s.queued_messages, s.queued_bytes, s.in_flight, s.oldest_queued_age) == (0, 0, 0, None)
        assert s.latency_samples == 5 and 0 < s.latency_p50 <= s.latency_p90 <= s.latency_p99 < 10
        client.update_reported_properties({"firmware": "1"})
        wait_until(lambda: client.stats.reported_version is not None, 10, "the reported version")
        assert "ClientStats(" in repr(s)
    assert client.stats.connection == "closed"


def test_connection_events_are_pushed_in_order_with_their_reasons(emulator, token, approver, tmp_path):
    from spotflow_device import ConnectionEvent

    events = []
    got = threading.Condition()

    def on_event(event):
        with got:
            events.append(event)
            got.notify_all()

    def wait_for(kind, after):
        with got:
            assert got.wait_for(lambda: any(e.kind == kind for e in events[after:]), timeout=20), [
                repr(e) for e in events
            ]
            return next(i for i in range(after, len(events)) if events[i].kind == kind)

    with start(emulator, token, tmp_path / "events.db", "py-events", approver, connection_event_callback=on_event) as client:
        first = wait_for("connected", 0)
        assert [e.kind for e in events[: first + 1]] == ["connecting", "connected"]
        assert events[0].attempt == 1 and events[0].reason is None
        assert 0 < events[first].since <= time.time()
        hub = f"{client.workspace_id}:{client.device_id}"
        assert emulator.admin("POST", f"/admin/devices/{hub}/disconnect")["disconnected"] is True
        lost = wait_for("disconnected", first + 1)
        again = wait_for("connected", lost)
        e = events[lost]
        assert isinstance(e, ConnectionEvent)
        assert (e.reason, e.retry_helps, e.permanent) == ("network", True, None), repr(e)
        assert e.retry_in >= 0 and "closed" in e.message
        assert [x.kind for x in events[lost : again + 1]] == ["disconnected", "connecting", "connected"]
        assert events[lost + 1].attempt == 2
    closed = wait_for("closed", again)
    assert closed == len(events) - 1


def test_log_handler_sends_records_through_the_durable_queue(emulator, token, approver, tmp_path):
    from spotflow_device import LogHandler

    app = logging.getLogger("pump")
    app.setLevel(logging.DEBUG)
    with start(emulator, token, tmp_path / "logs.db", "py-logs", approver) as client:
        handler = LogHandler(client, level=logging.INFO)
        handler.setFormatter(logging.Formatter("%(message)s"))
        app.addHandler(handler)
        sdk = logging.getLogger("spotflow_device")
        sdk.addHandler(handler)
        try:
            app.info("pressure %s bar", 7)
            app.debug("below the handler's level")
            app.error("valve stuck")
            sdk.warning("the SDK's own record is never taken")
            handler.flush()
        finally:
            app.removeHandler(handler)
            sdk.removeHandler(handler)
        hub = f"{client.workspace_id}:{client.device_id}"

        def records():
            return emulator.admin("GET", f"/admin/logs?device={hub}")["records"]

        wait_until(lambda: len(records()) >= 2, 20, "the records on the platform")
        got = [r["record"] for r in records()]
        assert [(r["level"], r["target"], r["message"]) for r in got] == [
            ("INFO", "pump", "pressure 7 bar"),
            ("ERROR", "pump", "valve stuck"),
        ]
        assert [r["seq"] for r in got] == [0, 1]
        errors = emulator.admin("GET", f"/admin/logs?device={hub}&level=error")["records"]
        assert [r["record"]["message"] for r in errors] == ["valve stuck"]


def test_c2d_messages_come_from_the_durable_inbox_until_completed(emulator, token, approver, tmp_path):
    from spotflow_device import C2dMessage

    db = tmp_path / "c2d.db"
    with start(emulator, token, db, "py-c2d", approver) as client:
        hub = f"{client.workspace_id}:{client.device_id}"
        assert client.receive_c2d_message(timeout=0) is None
        for i in range(2):
            emulator.admin("POST", f"/admin/devices/{hub}/c2d", {"payload": f"open valve {i}", "properties": {"valve": str(i)}})
        first = client.receive_c2d_message(timeout=20)
        assert isinstance(first, C2dMessage)
        assert (first.payload, first.properties["valve"]) == (b"open valve 0", "0")
        assert first.message_id
        first.complete()
        second = client.receive_c2d_message(timeout=20)
        assert second.payload == b"open valve 1"
        with pytest.raises(ValueError):
            client.receive_c2d_message(timeout=-1)
    # Not completed: returned again after a restart, and then gone.
    with start(emulator, token, db, "py-c2d", approver) as client:
        again = client.receive_c2d_message(timeout=20)
        assert again.payload == b"open valve 1"
        again.complete()
        assert client.receive_c2d_message(timeout=0.2) is None


def test_direct_method_handlers_answer_calls_from_the_platform(emulator, token, approver, tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="spotflow_device")

    def set_mode(payload):
        if payload.get("mode") not in ("eco", "boost"):
            return 400, {"detail": f"unknown mode {payload.get('mode')!r}"}
        return {"mode": payload["mode"]}

    def broken(_payload):
        raise RuntimeError("the sensor is unplugged")

    client = start(
        emulator, token, tmp_path / "device.db", "py-methods", approver,
        direct_method_handlers={
            "set_mode": set_mode,
            "read": broken,
            "ping": lambda payload: (204, None),
            "negative": lambda payload: (-5, {}),
            "text_status": lambda payload: ("200", {}),
            "triple": lambda payload: (200, {}, "extra"),
            "big": lambda payload: "x" * 2_000_000,
        },
    )
    try:
        device = hub_id(client)
        sender = client.create_stream_sender()
        sender.send_message(b"connected")

        def call(method, payload):
            return emulator.admin("POST", f"/admin/devices/{device}/methods/{method}?timeoutSecs=10", payload)

        wait_until(lambda: _answers(call, "ping"), what="the device takes direct methods")
        assert call("set_mode", {"mode": "eco"}) == {"status": 200, "payload": {"mode": "eco"}}
        assert call("set_mode", {"mode": "turbo"}) == {"status": 400, "payload": {"detail": "unknown mode 'turbo'"}}
        assert call("ping", None) == {"status": 204, "payload": None}
        answer = call("read", None)
        assert answer["status"] == 500 and "the sensor is unplugged" in answer["payload"]["detail"], answer
        assert call("nope", {}) == {"status": 404, "payload": {"detail": "No handler found"}}
        # An invalid status is an error its author sees (logged), never a 200 with the tuple as
        # the body; so is a tuple of another length.
        for method, reason in [("negative", "not -5"), ("text_status", "not '200'"), ("triple", "tuple of 3 items")]:
            answer = call(method, None)
            assert answer["status"] == 500 and reason in answer["payload"]["detail"], answer
            assert any(
                f'direct method "{method}"' in r.getMessage() and reason in r.getMessage() for r in caplog.records
            ), [r.getMessage() for r in caplog.records]
        # An answer over the platform's limit (128 KiB): 413 with the reason, the device stays connected.
        answer = call("big", None)
        assert answer["status"] == 413 and "limited to 131072 bytes" in answer["payload"]["detail"], answer
        assert call("ping", None) == {"status": 204, "payload": None}
        assert client.stats.reconnects == 0
    finally:
        client.close()
    with pytest.raises(TypeError):
        start(emulator, token, tmp_path / "other.db", "py-methods-bad", approver, direct_method_handlers={"x": 1})


def _answers(call, method):
    try:
        call(method, None)
        return True
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise


def test_remote_access_reaches_an_allowed_port_only(emulator, token, approver, tmp_path):
    """A tunnel through the emulator's `tunnel` command reaches an echo server on the device's
    side; a port that is not allowed is refused (403)."""
    import socket

    from emulator_process import emulator_binary

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def echo():
        conn, _ = server.accept()
        with conn:
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    with pytest.raises(ValueError):
        start(emulator, token, tmp_path / "bad.db", "py-remote-bad", approver, remote_access_ports=[port])
    client = start(
        emulator, token, tmp_path / "device.db", "py-remote", approver,
        allow_remote_access=True, remote_access_ports=[port],
    )
    tunnel = None
    try:
        device = hub_id(client)
        client.create_stream_sender().send_message(b"connected")
        other = port + 1 if port < 65535 else port - 1
        path = f"/admin/devices/{device}/methods/!remote-access?timeoutSecs=10"
        payload = {"tunnelId": "py-refused", "port": other, "tunnelSecureUri": "wss://localhost:1/t"}
        answer = wait_until(lambda: _answer_or_none(emulator, path, payload), what="the device takes remote access")
        assert answer == {"status": 403, "payload": {"detail": f"Remote access to port {other} is not allowed"}}
        tunnel = subprocess.Popen(
            [
                emulator_binary(), "tunnel", device, "--port", str(port), "--listen", "127.0.0.1:0",
                "--url", f"https://localhost:{emulator.https_port}", "--data-dir", str(emulator.data_dir),
                "--admin-token", emulator.admin_token,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        listening = tunnel.stdout.readline()
        assert listening.startswith("listening on "), listening
        address = listening.split()[2].rstrip(":")
        host, local_port = address.rsplit(":", 1)
        with socket.create_connection((host, int(local_port)), timeout=30) as conn:
            conn.sendall(b"hello through the platform")
            received = b""
            while len(received) < len(b"hello through the platform"):
                chunk = conn.recv(4096)
                assert chunk, "the tunnel closed early"
                received += chunk
        assert received == b"hello through the platform"
    finally:
        if tunnel:
            tunnel.kill()
            tunnel.wait(timeout=10)
        client.close()
        server.close()


def _answer_or_none(emulator, path, payload):
    try:
        return emulator.admin("POST", path, payload)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def _publish_artifact(emulator, data, version):
    import urllib.request

    request = urllib.request.Request(
        f"https://localhost:{emulator.https_port}/admin/updates/artifacts?version={version}",
        data=data,
        method="POST",
        headers={"Authorization": f"Bearer {emulator.admin_token}"},
    )
    with urllib.request.urlopen(request, context=emulator._context, timeout=10) as response:
        return json.loads(response.read().decode())


def test_software_updates_install_confirm_and_roll_back_through_python_callables(emulator, token, approver, tmp_path):
    from spotflow_device import UpdateAgent

    installed, rolled_back = [], []

    def install(update, path):
        with open(path, "rb") as f:
            installed.append((update["version"], f.read()))
        return False

    def confirm(update):
        if update["version"] == "3":
            raise RuntimeError("the service does not answer")

    def rollback(update):
        rolled_back.append(update["version"])

    key = emulator.admin("GET", "/admin/updates")["publicKey"]
    with start(emulator, token, tmp_path / "upd.db", "py-updater", approver) as client:
        hub = f"{client.workspace_id}:{client.device_id}"
        with pytest.raises(TypeError):
            client.start_update_agent(install=42, rollback=rollback)
        with pytest.raises(SpotflowError):
            client.start_update_agent(install, rollback, public_key="not hex")
        agent = client.start_update_agent(install, rollback, confirm=confirm, public_key=key, confirm_timeout=10.0)
        assert isinstance(agent, UpdateAgent)
        assert agent.state["state"] == "idle"
        for version, data in [("2", b"firmware 2"), ("3", b"firmware 3")]:
            artifact = _publish_artifact(emulator, data, version)
            assert artifact["size"] == len(data)
            rollout = emulator.admin("POST", "/admin/updates/rollouts", {"artifact": artifact["id"], "devices": [hub]})["id"]
            state = agent.wait_until_finished(rollout, timeout=30)
            assert state["id"] == rollout
            if version == "2":
                assert (state["state"], state["error"], state["bytes"]) == ("succeeded", None, len(data))
            else:
                assert state["state"] == "rolledBack"
                assert state["error"] == {"reason": "healthCheck", "detail": "RuntimeError: the service does not answer"}
        assert installed == [("2", b"firmware 2"), ("3", b"firmware 3")]
        assert rolled_back == ["3"]
        with pytest.raises(SpotflowError):
            agent.wait_until_finished("never", timeout=0.2)
        agent.stop()
