"""Ours against the official `spotflow-device` 2.1.1 from PyPI, both against one emulator.

Both packages are named `spotflow_device`, so each runs in its own virtual environment (given by
the interpreter paths). For each run, a fresh device is provisioned (not timed); then the child
enqueues MESSAGES messages of 256 bytes (timed: enqueue rate) and waits in
`wait_enqueued_messages_sent` (timed: end to end). Every message is checked in the emulator's store.
Runs alternate between the SDKs; medians are printed with the ratios. Ours runs twice: with the
default durability (each enqueue fsync'd, as the official SDK does) and with
SPOTFLOW_DURABILITY=crash-safe.

At equal (power-loss) durability one sequential sender is bound by the disk's flush latency, so
each run also measures the raw rate of the same disk: 256-byte appends to a file, each followed
by an fsync, from Python (the bar: our power-loss-safe enqueue rate >= 0.8x of it). Crash safe,
the bar is >= 20x the official package end to end.

    python bench/bench_vs_official.py --ours target/venv/bin/python \
        --official target/venv-official/bin/python [--messages 10000] [--runs 3]
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from emulator_process import Emulator  # noqa: E402

CHILD = r"""
import json, sys, time
from spotflow_device import DeviceClient
device_id, token, db, instance, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
client = DeviceClient.start(device_id, token, db, instance, lambda op: print("OPERATION", op.id, flush=True))
sender = client.create_stream_sender()
payload = (b'{"temperatureCelsius": 21.5, "humidityPercent": 50.1, "padding": "' + b"x" * 256)[:255] + b"}"
assert len(payload) == 256
start = time.perf_counter()
for i in range(n):
    sender.enqueue_message(payload)
enqueued = time.perf_counter()
client.wait_enqueued_messages_sent()
done = time.perf_counter()
print("RESULT", json.dumps({"enqueue_s": enqueued - start, "total_s": done - start}), flush=True)
"""


def run_once(emulator, python, label, index, messages, workdir, env):
    device_id = f"bench-{label}-{index}"
    token = emulator.create_provisioning_token()
    db = workdir / f"{device_id}.db"
    proc = subprocess.Popen(
        [python, "-c", CHILD, device_id, token, str(db), emulator.instance, str(messages)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, SSL_CERT_FILE=emulator.ca_path, **env),
    )
    result = None
    for line in proc.stdout:
        if line.startswith("OPERATION "):
            emulator.approve(line.split()[1])
        elif line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    code = proc.wait(timeout=600)
    if code != 0 or result is None:
        raise RuntimeError(f"{label} run failed ({code}): {proc.stderr.read()[-2000:]}")
    ws = [d for d in emulator.admin("GET", "/admin/devices") if d["deviceId"] == device_id][0]["workspaceId"]
    stored = emulator.messages(f"{ws}:{device_id}")
    if len(stored) != messages:
        raise RuntimeError(f"{label}: the emulator stored {len(stored)} of {messages} messages")
    return result


def raw_fsync_rate(workdir, appends=2000):
    """256-byte appends to a file in `workdir`, each fsync'd: appends per second."""
    path = workdir / "raw-fsync.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        record = b"x" * 256
        start = time.perf_counter()
        for _ in range(appends):
            os.write(fd, record)
            os.fsync(fd)
        return appends / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", required=True, help="python of the venv with our package")
    parser.add_argument("--official", required=True, help="python of the venv with spotflow-device==2.1.1")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        emulator = Emulator(workdir / "emulator").start()
        try:
            sdks = [
                ("ours", args.ours, {"SPOTFLOW_DURABILITY": "power-loss-safe"}),
                ("ours-crash-safe", args.ours, {"SPOTFLOW_DURABILITY": "crash-safe"}),
                ("official", args.official, {}),
            ]
            results = {label: [] for label, _, _ in sdks}
            raw = []
            for i in range(args.runs):
                raw.append(raw_fsync_rate(workdir))
                print(f"run {i + 1}/{args.runs} raw fsync'd appends of the same disk: {raw[-1]:,.0f}/s", flush=True)
                for label, python, env in sdks:
                    r = run_once(emulator, python, label, i, args.messages, workdir, env)
                    results[label].append(r)
                    print(
                        f"run {i + 1}/{args.runs} {label:>15}: enqueue {args.messages / r['enqueue_s']:>10,.0f} msg/s, "
                        f"all sent after {r['total_s']:.3f} s ({args.messages / r['total_s']:,.0f} msg/s end to end)",
                        flush=True,
                    )
        finally:
            emulator.stop()

    med = {k: {m: statistics.median(r[m] for r in v) for m in ("enqueue_s", "total_s")} for k, v in results.items()}
    print()
    print(f"{args.messages} messages of 256 bytes, medians of {args.runs} runs, same emulator (TLS, loopback):")
    for label in results:
        e, t = med[label]["enqueue_s"], med[label]["total_s"]
        print(f"  {label:>15}: enqueue_message {args.messages / e:>10,.0f} msg/s; wait_enqueued_messages_sent returns after {t:.3f} s")
    raw_rate = statistics.median(raw)
    print(f"  raw fsync'd 256-byte appends, same disk: {raw_rate:,.0f}/s")
    for label, what in [("ours", "power-loss safe, the default of both"), ("ours-crash-safe", "SPOTFLOW_DURABILITY=crash-safe")]:
        print(f"  ratio official / {label} ({what}): enqueue {med['official']['enqueue_s'] / med[label]['enqueue_s']:.1f}x, "
              f"end to end {med['official']['total_s'] / med[label]['total_s']:.1f}x")
    ours_rate = args.messages / med["ours"]["enqueue_s"]
    print(f"  ours power-loss safe / raw fsync'd appends: {ours_rate / raw_rate:.2f}x (target >= 0.8x: one sender is bound by the flush)")
    print(f"  official / ours crash safe, end to end: {med['official']['total_s'] / med['ours-crash-safe']['total_s']:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()
