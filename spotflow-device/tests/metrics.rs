//! The `metrics` feature: the client's figures reach the application's recorder, labelled with
//! the device, and agree with `DeviceClient::stats()`.
#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use spotflow_core::testkit::MemoryPlatform;
use spotflow_device::{Compression, ConnectionState, Message};

/// Histogram samples, as recorded.
#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

/// Keeps every registered handle by name; checks the labels.
#[derive(Default)]
struct TestRecorder {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    gauges: Mutex<HashMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<String, Arc<Samples>>>,
    labels: Mutex<Vec<Vec<(String, String)>>>,
}

impl TestRecorder {
    fn note(&self, key: &Key) -> String {
        self.labels.lock().unwrap().push(key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect());
        key.name().to_owned()
    }
    fn counter(&self, name: &str) -> u64 {
        self.counters.lock().unwrap().get(name).map_or(u64::MAX, |c| c.load(Ordering::Acquire))
    }
    fn gauge(&self, name: &str) -> f64 {
        self.gauges.lock().unwrap().get(name).map_or(f64::NAN, |g| f64::from_bits(g.load(Ordering::Acquire)))
    }
    fn histogram(&self, name: &str) -> Vec<f64> {
        self.histograms.lock().unwrap().get(name).map_or_else(Vec::new, |h| h.0.lock().unwrap().clone())
    }
}

impl Recorder for &'static TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let name = self.note(key);
        Counter::from_arc(self.counters.lock().unwrap().entry(name).or_default().clone())
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let name = self.note(key);
        Gauge::from_arc(self.gauges.lock().unwrap().entry(name).or_default().clone())
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let name = self.note(key);
        Histogram::from_arc(self.histograms.lock().unwrap().entry(name).or_default().clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_figures_reach_the_applications_recorder() {
    let recorder: &'static TestRecorder = Box::leak(Box::default());
    metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
    let platform = MemoryPlatform::new();
    let store = common::new_store();
    let client = common::start(&platform, &store).await;
    let sender = client.create_stream_sender(Some("g"), Some("s"), Compression::Uncompressed).unwrap();
    for i in 0..4 {
        sender.enqueue_message(Message::new(format!("m{i}"))).await.unwrap();
    }
    assert!(sender.enqueue_message(Message::new(Vec::new()).batch_id("")).await.is_err());
    client.wait_enqueued_messages_sent_timeout(common::WAIT).await.unwrap();
    assert!(platform.wait_until(common::WAIT, |_| client.stats().in_flight == 0).await);
    platform.drop_connections();
    assert!(
        platform.wait_until(common::WAIT, |_| client.stats().reconnects == 1 && client.is_connected()).await,
        "reconnected"
    );

    let stats = client.stats();
    assert_eq!(recorder.counter("spotflow_messages_enqueued_total"), stats.enqueued_total);
    assert_eq!(recorder.counter("spotflow_messages_enqueued_total"), 4);
    assert_eq!(recorder.counter("spotflow_messages_delivered_total"), 4);
    assert_eq!(recorder.counter("spotflow_enqueue_failures_total"), 1);
    assert_eq!(recorder.counter("spotflow_reconnects_total"), 1);
    assert_eq!(recorder.counter("spotflow_messages_redelivered_total"), 0);
    assert_eq!(recorder.counter("spotflow_messages_dropped_total"), 0);
    assert_eq!(recorder.counter("spotflow_messages_refused_total"), 0);
    assert_eq!(recorder.gauge("spotflow_queued_messages"), 0.0);
    assert_eq!(recorder.gauge("spotflow_queued_bytes"), 0.0);
    assert_eq!(recorder.gauge("spotflow_in_flight_messages"), 0.0);
    assert_eq!(recorder.gauge("spotflow_connected"), 1.0);
    let latencies = recorder.histogram("spotflow_delivery_latency_seconds");
    assert_eq!(latencies.len(), 4);
    assert!(latencies.iter().all(|s| (0.0..20.0).contains(s)), "{latencies:?}");
    let labels = recorder.labels.lock().unwrap().clone();
    let want = vec![
        ("workspace_id".to_owned(), client.workspace_id().to_owned()),
        ("device_id".to_owned(), client.device_id().to_owned()),
    ];
    assert!(labels.len() >= 12 && labels.iter().all(|l| *l == want), "{labels:?}");

    client.close().await.unwrap();
    assert_eq!(client.stats().connection, ConnectionState::Closed);
    assert_eq!(recorder.gauge("spotflow_connected"), 0.0);
}
