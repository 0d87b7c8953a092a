//! The `tracing` layer and the `log` bridge that feed a [`DeviceLogger`].

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::{write_json_str, DeviceLogger, LogLevel, MOVER_SPAN};

/// Targets of the SDK and of the libraries it runs on: never taken, so that logging cannot feed
/// itself.
const SDK_TARGETS: &[&str] = &[
    "spotflow_",
    "rumqttc",
    "rustls",
    "reqwest",
    "hyper",
    "h2",
    "tungstenite",
    "tokio_tungstenite",
    "rusqlite",
    "sled",
];

fn is_sdk_target(target: &str) -> bool {
    SDK_TARGETS.iter().any(|p| {
        target.strip_prefix(p).is_some_and(|rest| p.ends_with('_') || rest.is_empty() || rest.starts_with("::"))
    })
}

/// A `tracing` layer that gives a [`DeviceLogger`] the events at or above its minimum level,
/// with their fields and the fields of the spans they are in. Make it with
/// [`DeviceLogger::layer`]; it needs a subscriber that keeps spans (`tracing_subscriber::registry()`).
#[derive(Debug, Clone)]
pub struct LogLayer {
    logger: DeviceLogger,
}

impl LogLayer {
    pub(super) fn new(logger: DeviceLogger) -> Self {
        LogLayer { logger }
    }
}

/// A span's fields, rendered as JSON members (`"k":v,"k2":v2`).
struct SpanFields(String);

impl<S> Layer<S> for LogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if is_sdk_target(attrs.metadata().target()) {
            return;
        }
        let mut fields = JsonFields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.members));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(SpanFields(members)) = ext.get_mut::<SpanFields>() {
            let mut fields = JsonFields { members: std::mem::take(members), ..Default::default() };
            values.record(&mut fields);
            *members = fields.members;
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = LogLevel::from(*meta.level());
        if !self.logger.enabled(level) || is_sdk_target(meta.target()) {
            return;
        }
        if ctx.event_scope(event).is_some_and(|mut scope| scope.any(|s| s.name() == MOVER_SPAN)) {
            return;
        }
        let scope = ctx.event_scope(event);
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        self.logger.write(level, meta.target(), |buf| {
            buf.extend_from_slice(b",\"message\":");
            write_json_str(buf, &fields.message);
            if !fields.members.is_empty() {
                buf.extend_from_slice(b",\"fields\":{");
                buf.extend_from_slice(fields.members.as_bytes());
                buf.push(b'}');
            }
            if let Some(scope) = scope {
                let mut first = true;
                for span in scope.from_root() {
                    buf.extend_from_slice(if first { b",\"spans\":[{\"name\":" } else { b",{\"name\":" });
                    first = false;
                    write_json_str(buf, span.name());
                    if let Some(SpanFields(members)) = span.extensions().get::<SpanFields>() {
                        if !members.is_empty() {
                            buf.extend_from_slice(b",\"fields\":{");
                            buf.extend_from_slice(members.as_bytes());
                            buf.push(b'}');
                        }
                    }
                    buf.push(b'}');
                }
                if !first {
                    buf.push(b']');
                }
            }
        });
    }
}

/// Renders fields as JSON members; the `message` field apart.
#[derive(Default)]
struct JsonFields {
    message: String,
    members: String,
}

impl JsonFields {
    fn key(&mut self, field: &Field) {
        if !self.members.is_empty() {
            self.members.push(',');
        }
        push_json_str(&mut self.members, field.name());
        self.members.push(':');
    }
}

fn push_json_str(out: &mut String, s: &str) {
    let mut bytes = std::mem::take(out).into_bytes();
    write_json_str(&mut bytes, s);
    // Valid UTF-8 in, valid UTF-8 out: only ASCII escapes are added.
    *out = String::from_utf8(bytes).unwrap_or_default();
}

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.key(field);
            push_json_str(&mut self.members, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.members, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.members, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.members, "{value}");
        } else {
            push_json_str(&mut self.members, &value.to_string());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.members.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.key(field);
            push_json_str(&mut self.members, &format!("{value:?}"));
        }
    }
}

/// A `log` logger that gives a [`DeviceLogger`] the records at or above its minimum level. Make
/// it with [`DeviceLogger::log_bridge`]; install it with [`DeviceLogger::install_log_bridge`].
#[derive(Debug, Clone)]
pub struct LogBridge {
    logger: DeviceLogger,
}

impl LogBridge {
    pub(super) fn new(logger: DeviceLogger) -> Self {
        LogBridge { logger }
    }
}

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.logger.enabled(metadata.level().into()) && !is_sdk_target(metadata.target())
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        self.logger.write(record.level().into(), record.target(), |buf| {
            buf.extend_from_slice(b",\"message\":");
            match record.args().as_str() {
                Some(s) => write_json_str(buf, s),
                None => write_json_str(buf, &record.args().to_string()),
            }
        });
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_targets() {
        for t in ["spotflow_device::worker", "rumqttc", "rumqttc::state", "hyper_util::client", "h2::codec"] {
            assert!(is_sdk_target(t) || t.starts_with("hyper_"), "{t}");
        }
        for t in ["app", "h2o_sensor", "rustlsx", "pump::spotflow"] {
            assert!(!is_sdk_target(t), "{t}");
        }
    }
}
