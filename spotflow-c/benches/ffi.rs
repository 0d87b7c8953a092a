//! The cost of the C layer on the send path, in one process: the same client work through
//! `spotflow_client_enqueue_message` (the exported C function, called as C calls it) and through
//! the Rust blocking client it wraps, each against its own device on the emulator (in this
//! process), crash-safe (so that the store's fsync does not hide the layer), 256-byte messages,
//! alternating rounds; medians of the wall time and of the calling thread's CPU time per call
//! (`CLOCK_THREAD_CPUTIME_ID`: what the layer adds is spent on the caller's thread, and the
//! background work of both clients stays out).
//!
//! CPU per message at a device's pace, the C library in its own process against the Rust blocking
//! client, is in `spotflow-bench`'s `device_rate` benchmark (its "c (spotflow.h)" rows).
//!
//! `cargo bench -p spotflow-c --bench ffi -- [--messages N] [--rounds R] [--quick]`

use std::ffi::CString;
use std::time::{Duration, Instant};

use spotflow::*;
use spotflow_device::{Compression, Durability, Message};
use spotflow_emulator::Emulator;

fn main() {
    let mut messages = 20_000usize;
    let mut rounds = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--messages" => messages = args.next().and_then(|v| v.parse().ok()).expect("--messages N"),
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).expect("--rounds R"),
            "--quick" => (messages, rounds) = (5_000, 3),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let emu = rt.block_on(Emulator::builder().auto_approve(Some(Duration::ZERO)).start()).expect("emulator");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, emu.ca_pem()).expect("ca.pem");
    // The C library trusts the emulator's CA through SSL_CERT_FILE, as a C program does.
    std::env::set_var("SSL_CERT_FILE", &ca);
    std::env::remove_var("SSL_CERT_DIR");
    let port = emu.mqtts_addr().expect("MQTT/TLS").port();

    // The C client, through the exported functions.
    let cstr = |s: &str| CString::new(s).expect("no NUL");
    let (token, instance) = (cstr(&emu.create_provisioning_token()), cstr(&emu.https_url()));
    let (device, db) = (cstr("ffi-c"), cstr(&dir.path().join("c.db").display().to_string()));
    let mut options = std::ptr::null_mut();
    let mut client = std::ptr::null_mut();
    let mut context = std::ptr::null_mut();
    // SAFETY: the C API used as its header says: valid strings and out-pointers.
    unsafe {
        assert_eq!(spotflow_client_options_create(&mut options, device.as_ptr(), token.as_ptr(), db.as_ptr()), ok());
        assert_eq!(spotflow_client_options_set_instance(options, instance.as_ptr()), ok());
        assert_eq!(spotflow_client_options_set_mqtt_port(options, port), ok());
        assert_eq!(spotflow_client_options_set_durability(options, DurabilityArg(1)), ok());
        assert_eq!(
            spotflow_client_options_set_display_provisioning_operation_callback(
                options,
                Some(quiet),
                std::ptr::null_mut()
            ),
            ok()
        );
        assert_eq!(spotflow_client_start(&mut client, options), ok());
        spotflow_client_options_destroy(options);
        assert_eq!(spotflow_message_context_create(&mut context, std::ptr::null(), std::ptr::null()), ok());
    }

    // The Rust blocking client.
    let rust = spotflow_device::blocking::DeviceClient::builder(
        Some("ffi-rust"),
        emu.create_provisioning_token(),
        dir.path().join("rust.db"),
    )
    .instance(emu.https_url())
    .trust_ca_pem(emu.ca_pem())
    .with_network(|n| n.mqtt_port = port)
    .with_options(|o| o.durability = Durability::CrashSafe)
    .display_provisioning_operation_callback(|_| {})
    .start()
    .expect("Rust client");
    let sender = rust.create_stream_sender(None, None, Compression::Uncompressed).expect("sender");

    let payload = vec![b'x'; 256];
    let (mut c_times, mut rust_times) = (Vec::new(), Vec::new());
    let (mut c_cpu, mut rust_cpu) = (Vec::new(), Vec::new());
    println!("ffi: {messages} enqueues of 256 bytes per round, crash-safe, {rounds} rounds (C layer, then Rust)");
    for round in 0..rounds {
        let (started, cpu) = (Instant::now(), thread_cpu_us());
        for _ in 0..messages {
            // SAFETY: live client and context, a valid buffer.
            let r = unsafe {
                spotflow_client_enqueue_message(
                    client,
                    context,
                    std::ptr::null(),
                    std::ptr::null(),
                    payload.as_ptr(),
                    payload.len(),
                )
            };
            assert_eq!(r, ok());
        }
        let c = started.elapsed().as_secs_f64() * 1e6 / messages as f64;
        let c_thread = (thread_cpu_us() - cpu) / messages as f64;
        // SAFETY: a live client.
        assert_eq!(unsafe { spotflow_client_wait_enqueued_messages_sent(client) }, ok());

        let (started, cpu) = (Instant::now(), thread_cpu_us());
        for _ in 0..messages {
            sender.enqueue_message(Message::new(payload.clone())).expect("enqueue");
        }
        let r = started.elapsed().as_secs_f64() * 1e6 / messages as f64;
        let r_thread = (thread_cpu_us() - cpu) / messages as f64;
        rust.wait_enqueued_messages_sent().expect("sent");
        println!(
            "  round {}: C layer {c:.2} µs/enqueue ({c_thread:.2} µs CPU on the caller), Rust blocking {r:.2} µs \
             ({r_thread:.2} µs CPU), ratio {:.3} wall, {:.3} CPU",
            round + 1,
            c / r,
            c_thread / r_thread
        );
        c_times.push(c);
        rust_times.push(r);
        c_cpu.push(c_thread);
        rust_cpu.push(r_thread);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (c, r) = (median(&mut c_times), median(&mut rust_times));
    let (cc, rc) = (median(&mut c_cpu), median(&mut rust_cpu));
    println!("  median wall: C layer {c:.2} µs/enqueue, Rust blocking {r:.2} µs/enqueue: C / Rust {:.3}", c / r);
    println!(
        "  median CPU on the calling thread: C layer {cc:.2} µs/enqueue, Rust blocking {rc:.2} µs: C / Rust {:.3} \
         (target <= 1.05)",
        cc / rc
    );
    // SAFETY: live objects, destroyed once.
    unsafe {
        spotflow_message_context_destroy(context);
        spotflow_client_destroy(client);
    }
    rust.close().expect("close");
}

fn ok() -> spotflow_result_t {
    spotflow_result_t::SPOTFLOW_OK
}

/// Shows nothing: the emulator approves the device at once.
unsafe extern "C" fn quiet(_: *const spotflow_provisioning_operation_t, _: *mut std::ffi::c_void) {}

/// CPU time of the calling thread so far, in µs.
fn thread_cpu_us() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
}
