//! What the load generators (`examples/*.rs`) share: reading one HTTP/1.1
//! response off a keep-alive connection. Included with `#[path]`, as
//! examples cannot share a module otherwise.

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// Reads one response with a `Content-Length` body; `(status, connection
/// closes, Retry-After)`, or `None` when the connection failed.
pub async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(u16, bool, Option<u64>)> {
    buf.clear();
    let mut chunk = vec![0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())?;
    let close = head.lines().any(|l| l.trim() == "connection: close");
    let retry_after = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after:"))
        .and_then(|v| v.trim().parse().ok());
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((status, close, retry_after))
}
