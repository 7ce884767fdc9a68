//! Encoding of values stored in Redis.

use balancer_proto::snapshot::v1::Snapshot;
use prost::Message as _;

/// The largest snapshot a reader accepts: far above a fleet of thousands of
/// servers, far below what would hurt a redirector's memory.
pub const MAX_SNAPSHOT_BYTES: usize = 16 * 1024 * 1024;

/// A stored value that is not a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Bigger than [`MAX_SNAPSHOT_BYTES`].
    #[error("snapshot is {0} bytes, more than the {MAX_SNAPSHOT_BYTES} accepted")]
    TooLarge(usize),
    /// Not valid protobuf for `snapshot.v1.Snapshot`.
    #[error("snapshot does not decode: {0}")]
    Malformed(#[from] prost::DecodeError),
}

/// Encodes a snapshot for the `snapshot` key.
pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    snapshot.encode_to_vec()
}

/// Decodes the value of the `snapshot` key.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, DecodeError> {
    if bytes.len() > MAX_SNAPSHOT_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    Ok(Snapshot::decode(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use balancer_proto::snapshot::v1::{Mount, MountState, Server, ServerState, Stream};

    #[test]
    fn round_trips() {
        let snapshot = Snapshot {
            version: 7,
            published_at_ms: 1_700_000_000_000,
            poll_interval_ms: 2000,
            publisher: "host:1".into(),
            servers: vec![Server {
                name: "a".into(),
                public_url: "http://a".into(),
                state: ServerState::Up.into(),
                max_listeners: Some(10),
                ..Default::default()
            }],
            streams: vec![Stream {
                name: "s".into(),
                mounts: vec![Mount {
                    server: "a".into(),
                    mount: "/s.ogg".into(),
                    state: MountState::Live.into(),
                    listeners: 3,
                    max_listeners: None,
                    free_slots: u32::MAX,
                    headroom: 0,
                    info: None,
                }],
                fallback: String::new(),
                ..Default::default()
            }],
        };
        let decoded = decode_snapshot(&encode_snapshot(&snapshot)).expect("decodes");
        assert_eq!(decoded, snapshot);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b"\xff\xff\xff\xff"[..], b"\x0a\x05ab", b"hello world"] {
            assert!(decode_snapshot(bytes).is_err(), "{bytes:?}");
        }
        let huge = vec![0u8; MAX_SNAPSHOT_BYTES + 1];
        assert!(matches!(
            decode_snapshot(&huge),
            Err(DecodeError::TooLarge(_))
        ));
    }
}
