//! RFC 6455 frame headers and masking: the part of WebSocket a session
//! needs once the handshake is done.

use bytes::BufMut;
use thiserror::Error;

/// Frame opcodes (RFC 6455 §5.2).
pub(super) mod opcode {
    pub(crate) const CONTINUATION: u8 = 0x0;
    pub(crate) const TEXT: u8 = 0x1;
    pub(crate) const BINARY: u8 = 0x2;
    pub(crate) const CLOSE: u8 = 0x8;
    pub(crate) const PING: u8 = 0x9;
    pub(crate) const PONG: u8 = 0xA;
}

/// Largest control frame payload (RFC 6455 §5.5).
pub(super) const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame the peer should not have sent.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("reserved bits set")]
    Reserved,
    #[error("reserved opcode {0:#x}")]
    Opcode(u8),
    #[error("fragmented or oversized control frame")]
    Control,
    #[error("frame of {0} bytes over the session's limit")]
    TooLarge(u64),
    #[error("frame masking does not match the peer's role")]
    Masking,
}

/// One parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) fin: bool,
    pub(super) opcode: u8,
    pub(super) mask: Option<[u8; 4]>,
    pub(super) len: u64,
}

impl Header {
    pub(super) fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Parses the header at the start of `buf`: `None` if more bytes are
/// needed, else the header and its length in bytes. Refuses what no peer
/// of ours sends: reserved bits or opcodes, control frames that are
/// fragmented or over 125 bytes, data frames over `max_len`.
pub(super) fn parse(buf: &[u8], max_len: u64) -> Result<Option<(Header, usize)>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if !matches!(
        opcode,
        opcode::CONTINUATION
            | opcode::TEXT
            | opcode::BINARY
            | opcode::CLOSE
            | opcode::PING
            | opcode::PONG
    ) {
        return Err(FrameError::Opcode(opcode));
    }
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().unwrap_or([0xFF; 8])), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let header = Header {
        fin,
        opcode,
        mask: None,
        len,
    };
    if header.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(FrameError::Control);
    }
    if len > max_len {
        return Err(FrameError::TooLarge(len));
    }
    let mask = if masked {
        let Some(key) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    Ok(Some((Header { mask, ..header }, at)))
}

/// Appends a final frame's header (minimal length encoding, as RFC 6455
/// requires).
pub(super) fn put_header(out: &mut impl BufMut, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.put_u8(0x80 | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => out.put_u8(mask_bit | len as u8),
        126..=0xFFFF => {
            out.put_u8(mask_bit | 126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(mask_bit | 127);
            out.put_u64(len as u64);
        }
    }
    if let Some(key) = mask {
        out.put_slice(&key);
    }
}

/// XORs `data` with `key`, `offset` bytes into the frame's payload.
pub(super) fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let mut key = key;
    key.rotate_left(offset % 4);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn encoded(opcode: u8, len: usize, mask: Option<[u8; 4]>) -> BytesMut {
        let mut out = BytesMut::new();
        put_header(&mut out, opcode, len, mask);
        out
    }

    #[test]
    fn headers_round_trip_at_every_length_boundary() {
        for len in [0, 1, 125, 126, 65_535, 65_536, 1 << 20] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let buf = encoded(opcode::BINARY, len, mask);
                let expected =
                    2 + match len {
                        0..=125 => 0,
                        126..=65_535 => 2,
                        _ => 8,
                    } + if mask.is_some() { 4 } else { 0 };
                assert_eq!(buf.len(), expected, "len {len}");
                let (h, used) = parse(&buf, 1 << 20).unwrap().unwrap();
                assert_eq!(used, expected);
                assert_eq!(
                    h,
                    Header {
                        fin: true,
                        opcode: opcode::BINARY,
                        mask,
                        len: len as u64
                    }
                );
                // Every prefix is "need more", never an error or a guess.
                for cut in 0..expected {
                    assert_eq!(parse(&buf[..cut], 1 << 20), Ok(None), "cut {cut}");
                }
            }
        }
    }

    #[test]
    fn what_no_peer_sends_is_refused() {
        assert_eq!(parse(&[0xC2, 0x00], 10), Err(FrameError::Reserved));
        assert_eq!(parse(&[0x83, 0x00], 10), Err(FrameError::Opcode(3)));
        assert_eq!(parse(&[0x8B, 0x00], 10), Err(FrameError::Opcode(0xB)));
        // A ping without FIN, a ping of 126 bytes.
        assert_eq!(parse(&[0x09, 0x00], 10), Err(FrameError::Control));
        assert_eq!(parse(&[0x89, 126, 0, 126], 1000), Err(FrameError::Control));
        // Over the limit, including a 64-bit length with the top bit set.
        assert_eq!(parse(&[0x82, 11], 10), Err(FrameError::TooLarge(11)));
        let huge = [0x82, 127, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(parse(&huge, 10), Err(FrameError::TooLarge(u64::MAX)));
    }

    #[test]
    fn masking_twice_is_identity_and_offsets_continue_the_key() {
        let key = [0xA1, 0xB2, 0xC3, 0xD4];
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        for (i, b) in whole.iter().enumerate() {
            assert_eq!(*b, data[i] ^ key[i % 4]);
        }
        // Masked in two pieces at an odd split: the same bytes.
        let mut pieces = data.clone();
        let (a, b) = pieces.split_at_mut(13);
        apply_mask(a, key, 0);
        apply_mask(b, key, 13);
        assert_eq!(pieces, whole);
        apply_mask(&mut whole, key, 0);
        assert_eq!(whole, data);
    }
}
