//! What a device sends the emulator's broker: a valid CONNECT of a registered device followed by
//! any bytes (SUBSCRIBE, PUBLISH to telemetry and twin topics, PUBACK, PINGREQ, garbage), served
//! as the broker serves its connections. Nothing may panic or hang; the session ends when the
//! input does.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use spotflow_fuzz::EmulatorWorld;

fn world() -> &'static EmulatorWorld {
    static WORLD: OnceLock<EmulatorWorld> = OnceLock::new();
    WORLD.get_or_init(EmulatorWorld::start)
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.run(&w.connect, data, Duration::from_secs(5), |broker| w.emulator.serve_mqtt(broker, "fuzz"));
});
