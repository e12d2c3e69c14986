//! The component's stderr as log events: each line the component writes
//! becomes one `tracing` event (target `sigma_keys::component`), so its
//! messages follow the server's log filter and format, and
//! `--log-format json` stays one object per line.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// The longest line kept whole; a longer one is logged in pieces.
const MAX_LINE: usize = 4096;

/// A `wasi:cli/stderr` that writes to the log.
pub struct ComponentLog;

impl IsTerminal for ComponentLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for ComponentLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(Lines::default())
    }
}

/// Collects bytes until a line ends.
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    fn emit(line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        if !text.is_empty() {
            tracing::warn!(target: "sigma_keys::component", "{text}");
        }
    }
}

impl AsyncWrite for Lines {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.pending.extend_from_slice(buf);
        while let Some(end) = this.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = this.pending.drain(..=end).collect();
            Lines::emit(&line);
        }
        if this.pending.len() > MAX_LINE {
            Lines::emit(&std::mem::take(&mut this.pending));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        Lines::emit(&std::mem::take(&mut this.pending));
        Poll::Ready(Ok(()))
    }
}
