//! Writing frames into a reused buffer: [`encode_frame`] and its
//! shorthands for data, control and credit frames, or [`begin_frame`] /
//! [`finish_frame`] to write a payload in place.

use super::{
    DataHeader, FrameError, FrameHeader, Kind, CRC_BYTES, DATA_HEADER_BYTES, FRAME_OVERHEAD, LEN_BYTES,
    MAX_FRAME_BYTES, WIRE_VERSION,
};

/// A frame whose header has been written by [`begin_frame`] and whose
/// payload is being appended; close it with [`finish_frame`].
#[derive(Debug)]
#[must_use = "a begun frame must be finished with finish_frame"]
pub struct OpenFrame {
    start: usize,
}

/// Writes the length prefix (placeholder), crc (placeholder), header and,
/// for data frames, the data header at the end of `out`. The caller then
/// appends the payload (records) to `out` and calls [`finish_frame`].
pub fn begin_frame(
    header: &FrameHeader,
    data: Option<&DataHeader>,
    out: &mut Vec<u8>,
) -> Result<OpenFrame, FrameError> {
    if header.kind.is_data() != data.is_some() {
        return Err(FrameError::DataHeaderMismatch(header.kind));
    }
    let start = out.len();
    out.extend_from_slice(&[0u8; LEN_BYTES + CRC_BYTES]);
    out.push(WIRE_VERSION);
    out.push(header.kind as u8);
    out.extend_from_slice(&header.flags.to_le_bytes());
    out.extend_from_slice(&header.channel.to_le_bytes());
    out.extend_from_slice(&header.seq.to_le_bytes());
    if let Some(d) = data {
        out.extend_from_slice(&d.edge.to_le_bytes());
        out.extend_from_slice(&d.producer.to_le_bytes());
        out.extend_from_slice(&d.watermark.to_le_bytes());
        out.extend_from_slice(&d.count.to_le_bytes());
        out.extend_from_slice(&d.flags.to_le_bytes());
    }
    Ok(OpenFrame { start })
}

/// Completes a frame begun by [`begin_frame`]: fills in its length and crc.
/// If the frame exceeds [`MAX_FRAME_BYTES`], removes it from `out` and
/// returns [`FrameError::TooLarge`]. Returns the frame's total size.
pub fn finish_frame(frame: OpenFrame, out: &mut Vec<u8>) -> Result<usize, FrameError> {
    let start = frame.start;
    assert!(out.len() >= start + FRAME_OVERHEAD, "finish_frame: buffer shrank below the frame header");
    let len = (out.len() - start - LEN_BYTES) as u64;
    if len > u64::from(MAX_FRAME_BYTES) {
        out.truncate(start);
        return Err(FrameError::TooLarge { len, max: MAX_FRAME_BYTES });
    }
    let crc = crc32fast::hash(&out[start + LEN_BYTES + CRC_BYTES..]);
    out[start..start + LEN_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + LEN_BYTES..start + LEN_BYTES + CRC_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(out.len() - start)
}

/// Appends one complete frame to `out` (no allocation once `out` has grown
/// to its working size). `data` must be present exactly for
/// [`Kind::Data`]; for data frames `payload` is the records buffer.
/// Returns the frame's total size in bytes.
pub fn encode_frame(
    header: &FrameHeader,
    data: Option<&DataHeader>,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    let overhead = FRAME_OVERHEAD + if data.is_some() { DATA_HEADER_BYTES } else { 0 };
    let len = (overhead - LEN_BYTES) as u64 + payload.len() as u64;
    if len > u64::from(MAX_FRAME_BYTES) {
        return Err(FrameError::TooLarge { len, max: MAX_FRAME_BYTES });
    }
    let open = begin_frame(header, data, out)?;
    out.extend_from_slice(payload);
    finish_frame(open, out)
}

/// Appends a data frame carrying one batch's records.
pub fn encode_data(
    channel: u32,
    seq: u64,
    data: &DataHeader,
    records: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    encode_frame(&FrameHeader { kind: Kind::Data, flags: 0, channel, seq }, Some(data), records, out)
}

/// Appends a control frame (any kind but [`Kind::Data`]).
pub fn encode_control(
    kind: Kind,
    channel: u32,
    seq: u64,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    encode_frame(&FrameHeader { kind, flags: 0, channel, seq }, None, payload, out)
}

/// Appends a credit frame granting `credits` more batches on `channel`.
pub fn encode_credit(channel: u32, seq: u64, credits: u32, out: &mut Vec<u8>) -> usize {
    encode_control(Kind::Credit, channel, seq, &credits.to_le_bytes(), out)
        .expect("a credit frame is far below the size limit")
}
