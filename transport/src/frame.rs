//! Frames: how one message travels on a QUIC stream.
//!
//! ```text
//! +----------------+---------+---------------------------+
//! | length: u32 BE | version | postcard-encoded message  |
//! +----------------+---------+---------------------------+
//!                   <------------- length bytes --------->
//! ```
//! `length` counts the version byte and the payload and may not exceed the
//! receiver's limit; a larger length is refused before any of it is read, so a
//! peer cannot make us allocate more than the limit. `version` is
//! [`WIRE_VERSION`]; a frame of another version is refused by name rather than
//! misread.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The version of every message enum carried by this build. Bump it when a
/// wire type changes incompatibly.
pub const WIRE_VERSION: u8 = 9;

/// Default upper bound of one frame (8 MiB).
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024 * 1024;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame (no version byte)")]
    Empty,
    #[error("frame has wire version {got}, this node speaks version {WIRE_VERSION}")]
    Version { got: u8 },
    #[error("undecodable message: {0}")]
    Decode(postcard::Error),
    #[error("message nests deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("cannot encode message: {0}")]
    Encode(postcard::Error),
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
}

impl FrameError {
    /// True when the peer sent something we refuse (as opposed to a broken
    /// stream): the connection is then closed with this reason.
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            FrameError::TooLarge { .. }
                | FrameError::Empty
                | FrameError::Version { .. }
                | FrameError::Decode(_)
                | FrameError::TooDeep { .. }
                | FrameError::Truncated
        )
    }
}

/// Encodes `msg` as one complete frame.
pub fn encode<M: Serialize>(msg: &M, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; HEADER_LEN + 1];
    buf[HEADER_LEN] = WIRE_VERSION;
    let mut buf = postcard::to_extend(msg, buf).map_err(FrameError::Encode)?;
    let len = buf.len() - HEADER_LEN;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// The size `msg` takes in a frame body, without encoding it into a buffer
/// (for a sender packing several messages under [`DEFAULT_MAX_FRAME`]).
pub fn encoded_len<M: Serialize>(msg: &M) -> Result<usize, FrameError> {
    postcard::experimental::serialized_size(msg)
        .map(|n| n + 1)
        .map_err(FrameError::Encode)
}

/// Decodes the body of a frame (the bytes after the length prefix); values
/// nested deeper than [`crate::decode::MAX_DEPTH`] are refused.
pub fn decode_body<M: DeserializeOwned>(body: &[u8]) -> Result<M, FrameError> {
    let (&version, payload) = body.split_first().ok_or(FrameError::Empty)?;
    if version != WIRE_VERSION {
        return Err(FrameError::Version { got: version });
    }
    crate::decode::from_bytes(payload).map_err(|e| match e {
        crate::decode::DecodeError::Postcard(e) => FrameError::Decode(e),
        crate::decode::DecodeError::TooDeep { max } => FrameError::TooDeep { max },
    })
}

/// The body length announced by a frame's length prefix, refused when it
/// exceeds `max` (before anything is allocated for the body).
pub fn body_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Writes one frame holding `msg`.
pub async fn write<M: Serialize>(
    send: &mut quinn::SendStream,
    msg: &M,
    max: usize,
) -> Result<(), FrameError> {
    let buf = encode(msg, max)?;
    send.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame and decodes it. `Ok(None)` means the stream ended cleanly
/// before a new frame began.
pub async fn read<M: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<M>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match recv.read(&mut header[filled..]).await? {
            Some(n) => filled += n,
            None if filled == 0 => return Ok(None),
            None => return Err(FrameError::Truncated),
        }
    }
    let len = body_len(header, max)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => FrameError::Truncated,
        quinn::ReadExactError::ReadError(e) => FrameError::Read(e),
    })?;
    decode_body(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Ping(u64),
        Text(String),
        Blob(Vec<u8>),
        Nested(Vec<Msg>),
    }

    fn roundtrip(msg: &Msg) -> Msg {
        let buf = encode(msg, DEFAULT_MAX_FRAME).unwrap();
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len() - 4);
        decode_body(&buf[4..]).unwrap()
    }

    #[test]
    fn roundtrips() {
        for m in [
            Msg::Ping(7),
            Msg::Text("héllo".into()),
            Msg::Blob(vec![0; 1000]),
        ] {
            assert_eq!(roundtrip(&m), m);
        }
    }

    #[test]
    fn refuses_oversized_message_on_encode() {
        let err = encode(&Msg::Blob(vec![1; 100]), 50).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max: 50, .. }), "{err}");
    }

    #[test]
    fn refuses_other_versions_by_name() {
        let mut buf = encode(&Msg::Ping(1), DEFAULT_MAX_FRAME).unwrap();
        let other = WIRE_VERSION.wrapping_add(1);
        buf[4] = other;
        let err = decode_body::<Msg>(&buf[4..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("frame has wire version {other}, this node speaks version {WIRE_VERSION}")
        );
        assert!(err.is_protocol_violation());
    }

    #[test]
    fn refuses_empty_body() {
        assert!(matches!(decode_body::<Msg>(&[]), Err(FrameError::Empty)));
    }

    #[test]
    fn refuses_deeply_nested_messages_by_name() {
        // Msg::Nested with one element, 100,000 times: 200 KB that would
        // overflow the stack if decoded by plain recursion.
        let mut body = vec![WIRE_VERSION];
        for _ in 0..100_000 {
            body.extend_from_slice(&[3, 1]);
        }
        body.extend_from_slice(&[0, 7]);
        let err = decode_body::<Msg>(&body).unwrap_err();
        assert_eq!(err.to_string(), "message nests deeper than 64 levels");
        assert!(err.is_protocol_violation());
        let shallow = Msg::Nested(vec![Msg::Nested(vec![Msg::Ping(7)])]);
        assert_eq!(roundtrip(&shallow), shallow);
    }

    proptest! {
        #[test]
        fn the_length_prefix_is_held_to_the_limit(header in any::<[u8; HEADER_LEN]>(), max in 0usize..100_000) {
            let len = u32::from_be_bytes(header) as usize;
            match body_len(header, max) {
                Ok(n) => prop_assert!(n == len && n <= max),
                Err(FrameError::TooLarge { len: l, max: m }) => prop_assert!(l == len && m == max && l > max),
                Err(e) => prop_assert!(false, "unexpected error {}", e),
            }
        }

        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_body::<Msg>(&body);
        }

        #[test]
        fn any_text_roundtrips(s in ".*") {
            let m = Msg::Text(s);
            prop_assert_eq!(roundtrip(&m), m);
        }
    }
}
