"""The device-rate benchmark's device process in Python (the `device_rate` bench runs it; see
spotflow-bench/benches/device_rate.rs): one thread enqueues 256-byte messages at RATE per
second for SECONDS through the `spotflow_device` package it is run with (ours, or the official
2.1.1 from PyPI: both have the same API), then waits until they are all sent.

It speaks the Rust `rate-child`'s protocol on stdout: `READY` once started; after the run
`SENT n`, `T i unix_ns` per enqueue (stamped when it returned), `USAGE user_us system_us
voluntary_switches involuntary_switches max_rss_kib` (getrusage of the process, from READY to
the last acknowledgement) and `DONE`.

Environment: INSTANCE, PROVISIONING_TOKEN, DB, DEVICE_ID, RATE, SECONDS (and SSL_CERT_FILE for the
emulator's CA; SPOTFLOW_DURABILITY for ours).
"""

import os
import resource
import sys
import time

from spotflow_device import DeviceClient


def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return [int(r.ru_utime * 1e6), int(r.ru_stime * 1e6), r.ru_nvcsw, r.ru_nivcsw, r.ru_maxrss]


def main():
    rate = float(os.environ["RATE"])
    seconds = float(os.environ["SECONDS"])
    client = DeviceClient.start(
        os.environ["DEVICE_ID"], os.environ["PROVISIONING_TOKEN"], os.environ["DB"], os.environ["INSTANCE"], lambda op: None
    )
    sender = client.create_stream_sender("rate", "python")
    payload = b"x" * 256
    count = int(rate * seconds)
    stamps = []
    print("READY", flush=True)
    before = usage()
    start = time.monotonic()
    for i in range(count):
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        sender.enqueue_message(payload)
        stamps.append(time.time_ns())
    if count == 0:
        time.sleep(seconds)
    client.wait_enqueued_messages_sent()
    after = usage()
    out = [f"SENT {len(stamps)}"]
    out.extend(f"T {i} {t}" for i, t in enumerate(stamps))
    out.append("USAGE " + " ".join(str(a - b) for a, b in zip(after[:4], before[:4])) + f" {after[4]}")
    out.append("DONE")
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()
    # The official package may keep its threads busy at exit: leave at once.
    os._exit(0)


if __name__ == "__main__":
    main()
