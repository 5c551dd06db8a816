//! The frame decoder fed a byte stream in arbitrary chunks, as a QUIC
//! stream delivers it: the length prefix, the size limit, the version byte,
//! then the message (a peer's or a client's, picked by the first byte).
//!
//! `frame::read` is async over a quinn stream; [`read_frame`] is the same
//! loop over an in-memory stream that hands out at most a few bytes per
//! read, around the same `frame::body_len` and `frame::decode_body`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tstore_actors::peer::PeerMessage;
use tstore_core::wire::AdminRequest;
use tstore_transport::frame::{self, FrameError, HEADER_LEN};

/// A small limit, so that the fuzzer reaches it.
const MAX: usize = 4096;

/// A stream that returns at most a few bytes per read; the sizes come from
/// a small generator seeded by the input.
struct Chunked<'a> {
    data: &'a [u8],
    state: u32,
}

impl Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> usize {
        self.state = self.state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((self.state >> 16) as usize % 7 + 1)
            .min(buf.len())
            .min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        n
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), FrameError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(&mut buf[filled..]) {
                0 => return Err(FrameError::Truncated),
                n => filled += n,
            }
        }
        Ok(())
    }
}

/// `frame::read`, over [`Chunked`].
fn read_frame<M: DeserializeOwned>(stream: &mut Chunked) -> Result<Option<M>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match stream.read(&mut header[filled..]) {
            0 if filled == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            n => filled += n,
        }
    }
    let len = frame::body_len(header, MAX)?;
    assert!(len <= MAX);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    frame::decode_body(&body).map(Some)
}

/// Reads frames until the stream ends or a frame is refused (the
/// connection is then closed); every decoded message must survive a round
/// trip through `frame::encode`.
fn run<M: Serialize + DeserializeOwned>(stream: &mut Chunked) {
    loop {
        match read_frame::<M>(stream) {
            Ok(Some(msg)) => {
                let buf = frame::encode(&msg, MAX).expect("a decoded message re-encodes");
                let len = frame::body_len(buf[..HEADER_LEN].try_into().unwrap(), MAX).unwrap();
                assert_eq!(len, buf.len() - HEADER_LEN);
                let again: M = frame::decode_body(&buf[HEADER_LEN..]).expect("and decodes");
                assert_eq!(
                    buf,
                    frame::encode(&again, MAX).unwrap(),
                    "unstable round trip"
                );
            }
            Ok(None) => return,
            Err(e) => {
                assert!(e.is_protocol_violation(), "{e}");
                return;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, bytes)) = data.split_first() else {
        return;
    };
    let mut stream = Chunked {
        data: bytes,
        state: u32::from(ctl),
    };
    if ctl & 1 == 0 {
        run::<PeerMessage>(&mut stream);
    } else {
        run::<AdminRequest>(&mut stream);
    }
});
