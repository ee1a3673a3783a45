//! zstd through per-thread contexts, with decompression bounded by the caller's limit.

use std::cell::RefCell;
use std::io::Cursor;

// Contexts are reused per thread: creating one costs more than compressing a 1 KiB message
// (measured ~30 µs per call with a fresh context, see benches/benches/codec.rs).
thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Appends the zstd frame of `content` to `out` and returns its length. `out` must have spare
/// capacity for `zstd::zstd_safe::compress_bound(content.len())` bytes: the frame is written
/// straight into it, with no intermediate buffer.
pub(super) fn compress_into(
    content: &[u8],
    level: i32,
    out: &mut Vec<u8>,
) -> std::io::Result<usize> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, compressor) = slot.as_mut().expect("set above");
        let start = out.len();
        let mut cursor = Cursor::new(out);
        cursor.set_position(start as u64);
        compressor.compress_to_buffer(content, &mut cursor)
    })
}

/// The content of the zstd `frame`, which must be exactly `len` bytes long.
///
/// This is the bounded decoder: the output buffer is allocated once at `len` (which the caller
/// has checked against its decode limit) and never grows, zstd writes only into it and fails
/// with "destination too small" the moment a frame would produce more, whatever the frame
/// headers claim. One-shot decompression into the caller's buffer keeps no window buffer
/// either, so the only memory a frame can make this use is `len` bytes.
pub(super) fn decompress_exact(frame: &[u8], len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        let mut out = Vec::with_capacity(len);
        let n = slot
            .as_mut()
            .expect("set above")
            .decompress_to_buffer(frame, &mut out)?;
        if n != len || out.len() != len {
            return Err(std::io::Error::other(
                "decompressed length does not match the header",
            ));
        }
        Ok(out)
    })
}
