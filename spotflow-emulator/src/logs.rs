//! Device logs: the records of the logs stream (`device-logs`, JSON lines sent by the SDK's
//! `DeviceLogger`), kept one row each beside the messages that carried them. A record is
//! identified by its device, `journal` and `seq`: a record that arrives twice (the device moved it
//! into its queue again after a crash) is stored once and counted as a duplicate.

use rusqlite::{params, Transaction};
use serde::Serialize;
use serde_json::Value;

use crate::db::StoredMessage;

/// The stream whose messages carry device logs.
pub const LOG_STREAM: &str = "device-logs";

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS device_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, hub_device_id TEXT NOT NULL, journal TEXT NOT NULL,
    seq INTEGER NOT NULL, level INTEGER NOT NULL, record TEXT NOT NULL, message_id INTEGER NOT NULL,
    UNIQUE (hub_device_id, journal, seq));
CREATE INDEX IF NOT EXISTS device_logs_device ON device_logs (hub_device_id, id);
";

/// A log record as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// Row id (grows with arrival).
    pub id: i64,
    /// `{workspace}:{device}`.
    pub hub_device_id: String,
    /// The id of the message that carried it.
    pub message_id: i64,
    /// The record as the device sent it (`journal`, `seq`, `time`, `level`, `target`, `message`,
    /// `fields`, `spans`).
    pub record: Value,
}

/// Which log records to return.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only rows with an id greater than this.
    pub after_id: Option<i64>,
    /// Only this device.
    pub hub_device_id: Option<String>,
    /// Only records at least this severe (`error`, `warn`, `info`, `debug`, `trace`).
    pub min_level: Option<String>,
    /// At most this many (default 1000).
    pub limit: Option<usize>,
    /// Only the newest this many (still oldest first); with `after_id`, the newest after it.
    pub last: Option<usize>,
}

/// A level's rank (1 = error … 5 = trace; unknown names rank as info).
pub fn level_rank(level: &str) -> i64 {
    match level.to_ascii_uppercase().as_str() {
        "ERROR" => 1,
        "WARN" | "WARNING" => 2,
        "DEBUG" => 4,
        "TRACE" => 5,
        _ => 3,
    }
}

/// Whether a message carries logs.
pub(crate) fn is_log_message(m: &StoredMessage) -> bool {
    m.stream.as_deref() == Some(LOG_STREAM) && m.decode_error.is_none()
}

/// Stores the records of a logs message stored as row `message_id`; returns (new records,
/// duplicates). Lines that are not records (not JSON, no `journal` or `seq`) are skipped.
pub(crate) fn insert(tx: &Transaction<'_>, m: &StoredMessage, message_id: i64) -> rusqlite::Result<(u64, u64)> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO device_logs (hub_device_id, journal, seq, level, record, message_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let (mut new, mut duplicates) = (0, 0);
    for line in m.payload.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(record) = serde_json::from_slice::<Value>(line) else { continue };
        let (Some(journal), Some(seq)) = (record["journal"].as_str(), record["seq"].as_u64()) else { continue };
        let level = level_rank(record["level"].as_str().unwrap_or("INFO"));
        let text = std::str::from_utf8(line).unwrap_or_default();
        if insert.execute(params![m.hub_device_id, journal, seq as i64, level, text, message_id])? > 0 {
            new += 1;
        } else {
            duplicates += 1;
        }
    }
    Ok((new, duplicates))
}

pub(crate) fn query(conn: &rusqlite::Connection, q: &LogQuery) -> rusqlite::Result<Vec<LogEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, hub_device_id, message_id, record FROM (
           SELECT id, hub_device_id, message_id, record FROM device_logs
           WHERE id > ?1 AND (?2 IS NULL OR hub_device_id = ?2) AND level <= ?3
           ORDER BY CASE WHEN ?5 THEN -id ELSE id END LIMIT ?4)
         ORDER BY id",
    )?;
    let max_rank = q.min_level.as_deref().map_or(5, level_rank);
    let limit = q.last.map_or(q.limit.unwrap_or(1000), |last| last.min(q.limit.unwrap_or(usize::MAX)));
    let rows = stmt.query_map(
        params![q.after_id.unwrap_or(0), q.hub_device_id, max_rank, limit as i64, q.last.is_some()],
        |r| {
            let text: String = r.get(3)?;
            Ok(LogEntry {
                id: r.get(0)?,
                hub_device_id: r.get(1)?,
                message_id: r.get(2)?,
                record: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            })
        },
    )?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_stored_once() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let m = StoredMessage {
            hub_device_id: "ws:d".into(),
            stream: Some(LOG_STREAM.into()),
            payload: concat!(
                r#"{"journal":"0badcafe","seq":0,"level":"INFO","message":"a"}"#,
                "\n",
                "not json\n",
                r#"{"journal":"0badcafe","seq":1,"level":"ERROR","message":"b"}"#,
                "\n"
            )
            .into(),
            ..Default::default()
        };
        let tx = conn.transaction().unwrap();
        assert_eq!(insert(&tx, &m, 7).unwrap(), (2, 0));
        assert_eq!(insert(&tx, &m, 8).unwrap(), (0, 2));
        tx.commit().unwrap();
        let all = query(&conn, &LogQuery::default()).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].message_id, all[0].record["message"].as_str()), (7, Some("a")));
        let errors = query(&conn, &LogQuery { min_level: Some("error".into()), ..Default::default() }).unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].record["seq"], 1);
        let newest = query(&conn, &LogQuery { last: Some(1), ..Default::default() }).unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].record["seq"], 1);
    }
}
