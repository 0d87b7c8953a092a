//! The blob uploads of large messages: which uploads are started (by which device, with which
//! signature), and how an upload's body is received. A body is checked before it is read (its
//! announced length, then the started upload and its signature), streamed to a spool file as it
//! arrives (a connection holds one chunk in memory, never the blob), and counted against one
//! budget of bytes in flight for all uploads.

use std::collections::HashMap;
use std::io::{Seek, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest blob accepted (the SDK's largest message, `DEFAULT_MAX_MESSAGE_SIZE`); a larger one is
/// refused with 413 Payload Too Large, before any byte of it is read when its length is announced.
pub const MAX_BLOB_BYTES: usize = 16 * 1024 * 1024;
/// Bytes of all the uploads being received at once (eight of the largest blobs); an upload that
/// would go beyond is answered 503 (the SDK retries it with backoff).
pub const MAX_BYTES_IN_FLIGHT: usize = 8 * MAX_BLOB_BYTES;
/// Uploads started and not yet uploaded, per device. The SDK uploads one blob at a time, so a
/// device that reaches this starts uploads it does not finish.
pub const MAX_PENDING_PER_DEVICE: usize = 32;
/// Uploads started and not yet uploaded, all devices together (a backstop: the per-device bound
/// keeps one device from taking them all).
pub const MAX_PENDING: usize = 10_000;
/// How long a started upload waits for its blob; then its signature is refused and it no
/// longer counts against its device's bound.
pub const PENDING_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// An upload started and not yet uploaded.
struct Pending {
    device: String,
    signature: String,
    started: Instant,
}

/// Why an upload cannot start.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StartRefused {
    /// Another device's pending upload has this blob name.
    Taken,
    /// The device has [`MAX_PENDING_PER_DEVICE`] uploads pending.
    DeviceBusy,
    /// [`MAX_PENDING`] uploads are pending.
    Busy,
}

/// Why a body was not received.
#[derive(Debug)]
pub(crate) enum BodyRefused {
    /// Over [`MAX_BLOB_BYTES`] (announced or sent).
    TooLarge,
    /// The budget of bytes in flight is used up.
    Busy,
    /// The client failed or stopped sending.
    Client(String),
    /// The spool file failed.
    Storage(String),
}

/// The started uploads and the budget of bytes in flight.
pub(crate) struct Uploads {
    pending: Mutex<HashMap<String, Pending>>,
    in_flight: Arc<Semaphore>,
    spool_dir: PathBuf,
}

impl Uploads {
    /// Bodies are spooled in `spool_dir` (files without a name, gone when closed).
    pub(crate) fn new(spool_dir: PathBuf) -> Self {
        Uploads { pending: Mutex::default(), in_flight: Arc::new(Semaphore::new(MAX_BYTES_IN_FLIGHT)), spool_dir }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        spotflow_core::lock(&self.pending)
    }

    /// Starts (or restarts) `device`'s upload of `blob` with `signature`.
    pub(crate) fn start(&self, device: &str, blob: &str, signature: String) -> Result<(), StartRefused> {
        let mut pending = self.lock();
        pending.retain(|_, p| p.started.elapsed() < PENDING_LIFETIME);
        if let Some(p) = pending.get(blob) {
            if p.device != device {
                return Err(StartRefused::Taken);
            }
        } else {
            if pending.values().filter(|p| p.device == device).count() >= MAX_PENDING_PER_DEVICE {
                return Err(StartRefused::DeviceBusy);
            }
            if pending.len() >= MAX_PENDING {
                return Err(StartRefused::Busy);
            }
        }
        pending.insert(blob.to_owned(), Pending { device: device.to_owned(), signature, started: Instant::now() });
        Ok(())
    }

    /// The device whose pending upload of `blob` the `signature` authorises (compared in
    /// constant time), or why not.
    pub(crate) fn authorize(&self, blob: &str, signature: Option<&str>) -> Result<String, &'static str> {
        let pending = self.lock();
        let Some(p) = pending.get(blob) else { return Err("no upload was started for this blob") };
        if p.started.elapsed() >= PENDING_LIFETIME {
            return Err("the upload expired; start a new one");
        }
        match signature {
            Some(given) if crate::wire::ct_eq(given.as_bytes(), p.signature.as_bytes()) => Ok(p.device.clone()),
            _ => Err("invalid blob signature"),
        }
    }

    /// The upload of `blob` by `device` is done: it no longer counts as pending.
    pub(crate) fn finish(&self, device: &str, blob: &str) {
        let mut pending = self.lock();
        if pending.get(blob).is_some_and(|p| p.device == device) {
            pending.remove(blob);
        }
    }

    /// Receives a body into a spool file: at most [`MAX_BLOB_BYTES`], within the budget of bytes
    /// in flight (taken whole at once for an announced length, chunk by chunk otherwise). The
    /// file is rewound; the permit is held until the blob is stored.
    pub(crate) async fn receive(
        &self,
        announced: Option<u64>,
        body: axum::body::Body,
    ) -> Result<(std::fs::File, u64, OwnedSemaphorePermit), BodyRefused> {
        let take =
            |bytes: usize| self.in_flight.clone().try_acquire_many_owned(bytes as u32).map_err(|_| BodyRefused::Busy);
        let mut permit = match announced {
            Some(n) if n > MAX_BLOB_BYTES as u64 => return Err(BodyRefused::TooLarge),
            Some(n) => take(n as usize)?,
            None => take(0)?,
        };
        let mut file = tempfile::tempfile_in(&self.spool_dir).map_err(|e| {
            BodyRefused::Storage(format!("cannot create a spool file in {}: {e}", self.spool_dir.display()))
        })?;
        let mut received = 0usize;
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| BodyRefused::Client(e.to_string()))?;
            received += chunk.len();
            if received > MAX_BLOB_BYTES || announced.is_some_and(|n| received as u64 > n) {
                return Err(BodyRefused::TooLarge);
            }
            if announced.is_none() {
                permit.merge(take(chunk.len())?);
            }
            // A local file write of at most one chunk: short enough for the runtime's thread.
            file.write_all(&chunk).map_err(|e| BodyRefused::Storage(format!("cannot spool the blob: {e}")))?;
        }
        file.rewind().map_err(|e| BodyRefused::Storage(format!("cannot spool the blob: {e}")))?;
        Ok((file, received as u64, permit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_device_has_its_own_bound_and_names_stay_with_their_device() {
        let uploads = Uploads::new(std::env::temp_dir());
        for i in 0..MAX_PENDING_PER_DEVICE {
            uploads.start("a", &format!("a{i}"), format!("s{i}")).unwrap();
        }
        assert_eq!(uploads.start("a", "one-more", "s".into()), Err(StartRefused::DeviceBusy));
        // Restarting one of its own uploads is not a new one.
        uploads.start("a", "a0", "s0".into()).unwrap();
        uploads.start("b", "b0", "t0".into()).unwrap();
        assert_eq!(uploads.start("b", "a1", "x".into()), Err(StartRefused::Taken));
        assert_eq!(uploads.authorize("b0", Some("t0")), Ok("b".to_owned()));
        assert_eq!(uploads.authorize("b0", Some("t1")), Err("invalid blob signature"));
        assert_eq!(uploads.authorize("b0", None), Err("invalid blob signature"));
        assert_eq!(uploads.authorize("nope", Some("t0")), Err("no upload was started for this blob"));
        // Another device cannot finish it; its own upload done frees a place.
        uploads.finish("b", "a1");
        assert!(uploads.authorize("a1", Some("s1")).is_ok());
        uploads.finish("a", "a1");
        assert!(uploads.authorize("a1", Some("s1")).is_err());
        uploads.start("a", "one-more", "s".into()).unwrap();
    }

    #[tokio::test]
    async fn bodies_are_bounded_announced_or_not() {
        let uploads = Uploads::new(std::env::temp_dir());
        let over = MAX_BLOB_BYTES as u64 + 1;
        assert!(matches!(uploads.receive(Some(over), axum::body::Body::empty()).await, Err(BodyRefused::TooLarge)));
        // A body longer than announced is cut off.
        let body = axum::body::Body::from(vec![7u8; 10]);
        assert!(matches!(uploads.receive(Some(5), body).await, Err(BodyRefused::TooLarge)));
        // Chunked: counted as it comes.
        let chunks = futures_util::stream::iter(
            (0..17).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; 1024 * 1024]))),
        );
        let refused = uploads.receive(None, axum::body::Body::from_stream(chunks)).await;
        assert!(matches!(refused, Err(BodyRefused::TooLarge)));
        // What was taken of the budget is given back with a refused body.
        assert_eq!(uploads.in_flight.available_permits(), MAX_BYTES_IN_FLIGHT);
        let (mut file, len, permit) = uploads.receive(None, axum::body::Body::from(b"hello".to_vec())).await.unwrap();
        assert_eq!(len, 5);
        assert_eq!(uploads.in_flight.available_permits(), MAX_BYTES_IN_FLIGHT - 5);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).unwrap();
        assert_eq!(text, "hello");
        drop(permit);
        // The budget: announced lengths that do not fit are refused at once.
        let held: Vec<_> =
            (0..8).map(|_| uploads.in_flight.clone().try_acquire_many_owned(MAX_BLOB_BYTES as u32).unwrap()).collect();
        assert!(matches!(uploads.receive(Some(1), axum::body::Body::empty()).await, Err(BodyRefused::Busy)));
        drop(held);
        assert!(uploads.receive(Some(1), axum::body::Body::from(vec![1u8])).await.is_ok());
    }
}
