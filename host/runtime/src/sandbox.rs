//! Per-invocation resource accounting: the memory/table limiter, the capped capture of the
//! guest's stdout/stderr, and the budgets for host-side buffers the guest can grow (log and
//! output lines).
//!
//! Everything here is owned by one `Store` and dropped with it at the end of the call.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest single log/output line forwarded to the services; the rest of the line is cut.
pub const MAX_LINE_BYTES: usize = 64 << 10;
/// Most log/print calls one invocation may make; later calls are dropped (and counted).
pub const MAX_LINE_CALLS: u64 = 1_000_000;
/// Table elements (all tables of the store together).
pub(crate) const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Core instances, tables and memories per store: a Rust component uses a handful, a
/// componentize-py one a few dozen.
pub(crate) const MAX_INSTANCES: usize = 200;
pub(crate) const MAX_TABLES: usize = 200;
pub(crate) const MAX_MEMORIES: usize = 32;

/// Caps the total linear memory (all memories of the store together) and table sizes, and
/// remembers a refusal so that the resulting trap can be reported as "memory limit".
pub(crate) struct Limiter {
    pub memory_limit: usize,
    pub memory_used: usize,
    table_used: usize,
    last_growth: usize,
    /// The total the guest asked for when growth was refused.
    pub denied_memory: Option<usize>,
    pub denied_table: Option<usize>,
}

impl Limiter {
    pub fn new(memory_limit: usize) -> Self {
        Limiter { memory_limit, memory_used: 0, table_used: 0, last_growth: 0, denied_memory: None, denied_table: None }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let total = self.memory_used.saturating_add(growth);
        if total > self.memory_limit || maximum.is_some_and(|m| desired > m) {
            self.denied_memory = Some(total);
            return Ok(false);
        }
        self.memory_used = total;
        self.last_growth = growth;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // The pool (or the OS) refused what we allowed: undo our accounting of it.
        self.memory_used = self.memory_used.saturating_sub(self.last_growth);
        self.denied_memory = Some(self.memory_used.saturating_add(self.last_growth));
        Ok(())
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.table_used.saturating_add(desired.saturating_sub(current));
        if total > MAX_TABLE_ELEMENTS || maximum.is_some_and(|m| desired > m) {
            self.denied_table = Some(total);
            return Ok(false);
        }
        self.table_used = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }
    fn tables(&self) -> usize {
        MAX_TABLES
    }
    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// A byte budget for lines the guest sends to the host (log, output). Lines beyond it are
/// dropped and counted, so that the host can say how much was lost.
#[derive(Debug)]
pub(crate) struct LineBudget {
    limit: usize,
    used: usize,
    calls: u64,
    pub dropped_lines: u64,
    pub dropped_bytes: u64,
}

impl LineBudget {
    pub fn new(limit: usize) -> Self {
        LineBudget { limit, used: 0, calls: 0, dropped_lines: 0, dropped_bytes: 0 }
    }

    /// The line to forward (cut to [`MAX_LINE_BYTES`]), or `None` when over the budget.
    pub fn admit<'a>(&mut self, line: &'a str) -> Option<std::borrow::Cow<'a, str>> {
        self.calls += 1;
        let line = cap_line(line);
        if self.calls > MAX_LINE_CALLS || self.used.saturating_add(line.len()) > self.limit {
            self.dropped_lines += 1;
            self.dropped_bytes += line.len() as u64;
            return None;
        }
        self.used += line.len();
        Some(line)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Cuts `line` to [`MAX_LINE_BYTES`] on a char boundary, saying how much was cut.
pub(crate) fn cap_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= MAX_LINE_BYTES {
        return line.into();
    }
    let mut end = MAX_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ... [line cut: {} more bytes]", &line[..end], line.len() - end).into()
}

/// Cuts `s` to at most `max` bytes on a char boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Default)]
struct CaptureBuf {
    data: Vec<u8>,
    dropped: u64,
}

/// The guest's stdout or stderr: keeps the first `capacity` bytes and silently drops the
/// rest. It never reports "full" to the guest: a closed stdout makes Rust's `println!`
/// panic, which would turn a chatty plugin into a failed task.
#[derive(Clone)]
pub(crate) struct Capture {
    capacity: usize,
    buf: Arc<Mutex<CaptureBuf>>,
}

impl Capture {
    pub fn new(capacity: usize) -> Self {
        Capture { capacity, buf: Arc::default() }
    }

    fn push(&self, bytes: &[u8]) {
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.capacity.saturating_sub(b.data.len());
        let keep = room.min(bytes.len());
        b.data.extend_from_slice(&bytes[..keep]);
        b.dropped += (bytes.len() - keep) as u64;
    }

    /// The last `max` captured bytes (without consuming them), and whether more came before.
    pub fn peek_tail(&self, max: usize) -> (Vec<u8>, bool) {
        let b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let start = b.data.len().saturating_sub(max);
        (b.data[start..].to_vec(), start > 0 || b.dropped > 0)
    }

    /// The captured bytes and how many were dropped.
    pub fn take(&self) -> (Vec<u8>, u64) {
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut b.data), std::mem::take(&mut b.dropped))
    }
}

/// Write permit handed to the guest per `check-write`; the guest writes at most this much
/// per call, and we accept all of it (keeping what fits).
const PERMIT: usize = 64 << 10;

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(PERMIT)
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_drops_and_counts() {
        let mut b = LineBudget::new(10);
        assert_eq!(b.admit("12345").as_deref(), Some("12345"));
        assert_eq!(b.admit("123456").as_deref(), None);
        assert_eq!(b.admit("12345").as_deref(), Some("12345"));
        assert_eq!(b.admit("1").as_deref(), None);
        assert_eq!((b.dropped_lines, b.dropped_bytes), (2, 7));
    }

    #[test]
    fn long_lines_are_cut_on_char_boundaries() {
        let line = "é".repeat(MAX_LINE_BYTES); // 2 bytes each
        let cut = cap_line(&line);
        assert!(cut.len() < MAX_LINE_BYTES + 64);
        assert!(cut.ends_with(&format!("[line cut: {} more bytes]", MAX_LINE_BYTES)));
        assert_eq!(truncate("héllo", 2), "h");
    }

    #[test]
    fn capture_keeps_prefix() {
        let c = Capture::new(4);
        c.push(b"abc");
        c.push(b"def");
        assert_eq!(c.take(), (b"abcd".to_vec(), 2));
    }

    #[test]
    fn limiter_caps_total_memory() {
        let mut l = Limiter::new(1 << 20);
        assert!(l.memory_growing(0, 512 << 10, None).unwrap());
        assert!(l.memory_growing(0, 512 << 10, None).unwrap()); // a second memory
        assert!(!l.memory_growing(512 << 10, 576 << 10, None).unwrap());
        assert_eq!(l.denied_memory, Some((1 << 20) + (64 << 10)));
    }
}
