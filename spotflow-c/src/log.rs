//! The library's logs: to stderr from WARN by default (as the reference's library), the level set
//! with `spotflow_set_log_level`, or to the application's callback (`spotflow_set_log_callback`).
//!
//! A minimal `tracing` subscriber: the SDK logs through `tracing`, and a C program has no
//! subscriber of its own. It is installed once, by the first exported call; if the process
//! already has a global subscriber (a Rust program linking this library), that one is kept.

use std::ffi::{c_char, CString};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Once, PoisonError, RwLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::context::Context;
use crate::spotflow_log_level_t;

/// The level: 0 off, 1 error … 5 trace (the values of `spotflow_log_level_t`).
static LEVEL: AtomicU8 = AtomicU8::new(2);
static INSTALL: Once = Once::new();

type LogFn = unsafe extern "C" fn(spotflow_log_level_t, *const c_char, *const c_char, *mut std::ffi::c_void);

/// The application's log callback (NULL: stderr).
pub type LogCallback = Option<LogFn>;

static CALLBACK: RwLock<Option<(LogFn, Context)>> = RwLock::new(None);

pub(crate) fn install() {
    INSTALL.call_once(|| {
        // Err: the process has a global subscriber already (a Rust host); it keeps it.
        let _ = tracing::subscriber::set_global_default(CLogger);
    });
}

pub(crate) fn set_level(level: u8) {
    LEVEL.store(level, Ordering::Relaxed);
    tracing::callsite::rebuild_interest_cache();
}

pub(crate) fn set_callback(callback: LogCallback, context: Context) {
    *CALLBACK.write().unwrap_or_else(PoisonError::into_inner) = callback.map(|c| (c, context));
}

fn rank(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

struct CLogger;

/// An event's message and fields as one line: `message key=value …`.
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            // Quoted and escaped: a server's string cannot forge a line of its own.
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for CLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        rank(metadata.level()) <= LEVEL.load(Ordering::Relaxed)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(match LEVEL.load(Ordering::Relaxed) {
            0 => tracing::level_filters::LevelFilter::OFF,
            1 => tracing::level_filters::LevelFilter::ERROR,
            2 => tracing::level_filters::LevelFilter::WARN,
            3 => tracing::level_filters::LevelFilter::INFO,
            4 => tracing::level_filters::LevelFilter::DEBUG,
            _ => tracing::level_filters::LevelFilter::TRACE,
        })
    }

    // Spans carry no output here: every span is the same one.
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        let mut line = Line(String::new());
        event.record(&mut line);
        let callback = *CALLBACK.read().unwrap_or_else(PoisonError::into_inner);
        match callback {
            Some((callback, context)) => {
                let level = match *metadata.level() {
                    Level::ERROR => spotflow_log_level_t::SPOTFLOW_LOG_ERROR,
                    Level::WARN => spotflow_log_level_t::SPOTFLOW_LOG_WARN,
                    Level::INFO => spotflow_log_level_t::SPOTFLOW_LOG_INFO,
                    Level::DEBUG => spotflow_log_level_t::SPOTFLOW_LOG_DEBUG,
                    Level::TRACE => spotflow_log_level_t::SPOTFLOW_LOG_TRACE,
                };
                let target = CString::new(metadata.target()).unwrap_or_default();
                let message = CString::new(line.0.replace('\0', "\\0")).unwrap_or_default();
                // SAFETY: the application's callback, given valid NUL-terminated strings that
                // live for the call (the header's rule).
                unsafe { callback(level, target.as_ptr(), message.as_ptr(), context.ptr()) };
            }
            None => {
                let now = time::OffsetDateTime::now_utc();
                let stamp =
                    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| String::from("-"));
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "{stamp} {:>5} {}: {}",
                    metadata.level(),
                    metadata.target(),
                    line.0
                );
            }
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
