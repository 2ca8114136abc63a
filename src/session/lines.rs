//! Line framing of the socket protocol: one line at a time, bounded in bytes.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

pub(super) enum LineRead {
    Line(Vec<u8>),
    TooLong,
    Eof,
}

/// Reads one line (without `\n` and a trailing `\r`), never buffering more than `max` bytes.
pub(super) async fn read_line_limited<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: u64,
) -> std::io::Result<LineRead> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if line.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line(line)
            });
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if (line.len() + chunk.len()) as u64 > max + 1 {
            return Ok(LineRead::TooLong);
        }
        line.extend_from_slice(chunk);
        let used = found.unwrap_or(chunk.len());
        reader.consume(used);
        if found.is_some() {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() as u64 > max {
                return Ok(LineRead::TooLong);
            }
            return Ok(LineRead::Line(line));
        }
    }
}
