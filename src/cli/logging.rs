//! fuser logs a reply to a request the kernel already dropped (an
//! interrupted call: the send fails with ENOENT) as an error. That is
//! routine for a filesystem, so it is shown as a debug line, and only when
//! debug output is on.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Wraps the usual event format; rewrites only fuser's dropped replies.
pub struct DemoteDroppedReplies<F> {
    pub inner: F,
    /// Whether debug lines are shown at all.
    pub debug: bool,
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S, N, F> FormatEvent<S, N> for DemoteDroppedReplies<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let mut msg = Message(String::new());
        event.record(&mut msg);
        let dropped = msg.0.starts_with("Failed to send FUSE reply")
            && msg.0.contains(&format!("os error {}", libc::ENOENT));
        if !dropped {
            return self.inner.format_event(ctx, writer, event);
        }
        if self.debug {
            writeln!(
                writer,
                " DEBUG fuser::reply: the kernel dropped an interrupted request before its reply ({})",
                msg.0
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(debug: bool) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .event_format(DemoteDroppedReplies {
                inner: tracing_subscriber::fmt::format().with_ansi(false),
                debug,
            })
            .finish();
        tracing::subscriber::with_default(sub, || {
            let dropped = std::io::Error::from_raw_os_error(libc::ENOENT);
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: {dropped}");
            let other = std::io::Error::from_raw_os_error(libc::EIO);
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: {other}");
        });
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn dropped_replies_are_debug_lines() {
        let quiet = logged(false);
        assert_eq!(quiet.lines().count(), 1, "{quiet}");
        assert!(quiet.contains("ERROR") && quiet.contains("Input/output error"));
        let debug = logged(true);
        assert_eq!(debug.lines().count(), 2, "{debug}");
        assert!(debug.lines().any(|l| l.contains("DEBUG fuser::reply")
            && l.contains("interrupted")
            && !l.contains("ERROR")));
    }
}
