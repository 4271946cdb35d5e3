//! The server side of the protocol, written once for every transport.
//!
//! [`run`] accepts sessions from a [`Listener`] until the stop flag is
//! raised (Ctrl-C, SIGTERM), and serves each session on its own thread with
//! [`serve_session`]. When it returns, the listener is dropped, which removes
//! the transport's kernel objects.
//!
//! Why a thread per session: a blocking read per client is the simplest
//! correct design, and a client that is idle, slow, or that never reads its
//! replies blocks only its own thread (its reads are bounded by the idle
//! timeout and its writes by the I/O timeout). The number of sessions is
//! capped ([`Config::max_clients`], or 1 for transports that serve one client
//! at a time); a client over the cap gets `ERR busy …` and is closed.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::conn::{FramedConn, write_reply};
use crate::protocol::{Form, Message, Reply, Request, parse_request};
use crate::transport::{Config, Link, Listener};

/// How often the accept loop looks at the stop flag.
pub const TICK: Duration = Duration::from_millis(100);
/// How often it asks the listener to sweep dead clients' leftovers.
const SWEEP: Duration = Duration::from_secs(1);

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client sent `quit`.
    Quit,
    /// The client closed its end between two messages.
    PeerClosed,
    /// The client sent something the session cannot continue after
    /// (an oversized or untrustworthy frame); it got an error reply.
    Refused(String),
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Quit => f.write_str("it sent quit"),
            SessionEnd::PeerClosed => f.write_str("it closed its end"),
            SessionEnd::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

/// Serve one client: answer requests until `quit`, end of stream, or an
/// error. Returns how it ended and how many requests were answered.
///
/// `timeout` (the server's `--timeout`) bounds how long a client may take to
/// make progress on a message it has begun (a trickle of bytes does not hold
/// a session: see [`FramedConn::set_message_timeout`]) and how long the rest
/// of a refused oversized message is read and dropped (see
/// [`FramedConn::discard_refused`]), so a client
/// still sending it can finish and read the error reply on every
/// transport — not only on those where the kernel keeps a closed peer's
/// last bytes readable.
pub fn serve_session<L: Read + Write>(
    link: L,
    max_frame: usize,
    timeout: Duration,
) -> (u64, io::Result<SessionEnd>) {
    let mut conn = FramedConn::new(link, max_frame);
    conn.set_message_timeout(timeout);
    let mut served = 0u64;
    let end = loop {
        let (msg, link) = match conn.recv_with_link() {
            Ok(Some(x)) => x,
            Ok(None) => break Ok(SessionEnd::PeerClosed),
            Err(e) => break Err(e),
        };
        let form = msg.form();
        let fatal = match msg {
            Message::Oversized { announced, .. } => Some((
                format!(
                    "message of {announced} bytes exceeds the limit of {max_frame} bytes; closing the session"
                ),
                true,
            )),
            Message::Malformed(why) => Some((format!("{why}; closing the session"), false)),
            _ => None,
        };
        if let Some((reason, oversized)) = fatal {
            // Let the peer finish sending first: on a mechanism with a small
            // shared buffer (a message queue, a locked file) the reply could
            // not get through while the request fills it.
            if oversized {
                let budget = (max_frame as u64).saturating_mul(4).max(64 << 20);
                conn.discard_refused(budget, timeout);
            }
            // A failed error reply changes nothing: the session ends anyway.
            let _ = conn.send_reply(form, &Reply::Error(reason.as_bytes()));
            break Ok(SessionEnd::Refused(reason));
        }
        let result = match parse_request(&msg) {
            Ok(Request::Ping) => write_reply(link, form, &Reply::Pong),
            Ok(Request::Echo(payload)) => write_reply(link, form, &Reply::Data(payload)),
            Ok(Request::Quit) => {
                let r = write_reply(link, form, &Reply::Bye);
                served += 1;
                break r.map(|()| SessionEnd::Quit);
            }
            Err(bad) => write_reply(link, form, &Reply::Error(bad.0.as_bytes())),
        };
        served += 1;
        if let Err(e) = result {
            break Err(e);
        }
    };
    (served, end)
}

/// Accept and serve sessions until `stop` is raised; then return, dropping
/// the listener (which removes the transport's objects).
///
/// `multi_client` false limits the server to one session at a time.
/// With `log`, a line per session goes to stderr.
pub fn run(
    mut listener: Box<dyn Listener>,
    cfg: &Config,
    multi_client: bool,
    stop: &AtomicBool,
    log: bool,
) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let limit = if multi_client {
        cfg.max_clients.max(1)
    } else {
        1
    };
    let mut next_id = 0u64;
    // The last accept error reported: the same one is not repeated every
    // tick while it lasts.
    let mut failing: Option<i32> = None;
    let mut swept = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if listener.exhausted() && active.load(Ordering::SeqCst) == 0 {
            break;
        }
        if swept.elapsed() >= SWEEP {
            listener.sweep();
            swept = Instant::now();
        }
        let link = match listener.accept(TICK) {
            Ok(Some(link)) => {
                if failing.take().is_some() {
                    eprintln!("ipclab: accepting clients again");
                }
                link
            }
            Ok(None) => continue,
            Err(e) if is_transient(&e) => {
                // Out of file descriptors or memory: say so, wait, and go on;
                // the server recovers when the resource is back.
                if failing != e.raw_os_error() {
                    eprintln!("ipclab: accept failed: {e}{}; retrying", limit_hint(&e));
                    failing = e.raw_os_error();
                }
                std::thread::sleep(TICK);
                continue;
            }
            Err(e) => return Err(e),
        };
        next_id += 1;
        let id = next_id;
        if active.load(Ordering::SeqCst) >= limit {
            refuse_busy(link, limit);
            if log {
                eprintln!("ipclab: client {id} refused: busy ({limit} session(s) active)");
            }
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let guard = ActiveGuard(Arc::clone(&active));
        let max_frame = cfg.max_frame;
        let timeout = cfg.timeout;
        let spawned = std::thread::Builder::new()
            .name(format!("session-{id}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut link = link;
                if log {
                    eprintln!("ipclab: client {id} connected");
                }
                let (served, end) = serve_session(&mut link, max_frame, timeout);
                // No longer serving: free the place first, then let the link
                // clean up (which may wait for the client to leave).
                drop(guard);
                if matches!(end, Ok(SessionEnd::Refused(_))) {
                    linger(link);
                } else {
                    drop(link);
                }
                if log {
                    match end {
                        Ok(end) => {
                            eprintln!("ipclab: client {id} left after {served} request(s): {end}")
                        }
                        Err(e) => {
                            eprintln!("ipclab: client {id} dropped after {served} request(s): {e}")
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("ipclab: cannot start a thread for client {id}: {e}");
        }
    }
    listener.sweep();
    drop(listener);
    Ok(())
}

/// After refusing a message, the client may still be sending the rest of
/// it. Closing a TCP socket with unread data makes the kernel answer with a
/// reset, and a client whose next `write` fails with it may exit without
/// ever reading the error reply that explains why (socat does exactly
/// that). So the close waits a quarter second — on a thread of its own,
/// which no longer counts as a session — giving the client time to read
/// the reply first. (Reading and discarding the rest, as a web server's
/// "lingering close" does, could wait as long as the idle timeout on a
/// client that stops sending: a generic link has no shorter read timeout.)
fn linger(link: Box<dyn Link>) {
    let spawned = std::thread::Builder::new()
        .name("linger".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            std::thread::sleep(Duration::from_millis(250));
            drop(link);
        });
    // No thread: just close (the closure, and the link, are dropped).
    drop(spawned);
}

struct ActiveGuard(Arc<AtomicUsize>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn refuse_busy(mut link: Box<dyn Link>, limit: usize) {
    // The client's form is unknown before it speaks; a text line is read as
    // an error reply by both forms (see `protocol::parse_reply`).
    let reason = format!("busy: this server serves {limit} client(s) at a time; try again later");
    let _ = write_reply(&mut link, Form::Text, &Reply::Error(reason.as_bytes()));
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EINTR
                | libc::EPROTO
        )
    )
}

fn limit_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) => {
            " (the per-process open-file limit, RLIMIT_NOFILE, was reached: see `ulimit -n` and `ipclab limits`)"
        }
        Some(libc::ENFILE) => {
            " (the system-wide open-file limit was reached: see /proc/sys/fs/file-max)"
        }
        Some(libc::ENOBUFS | libc::ENOMEM) => " (the kernel is out of memory for sockets)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::write_request;
    use crate::protocol::{self, kind};

    /// A scripted link: fixed input, collected output.
    struct Script(io::Cursor<Vec<u8>>, Vec<u8>);
    impl Read for Script {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for Script {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn run_script(input: Vec<u8>, max: usize) -> (Vec<u8>, u64, SessionEnd) {
        let mut s = Script(io::Cursor::new(input), Vec::new());
        let (n, end) = serve_session(&mut s, max, Duration::from_secs(1));
        (s.1, n, end.unwrap())
    }

    #[test]
    fn text_session() {
        let (out, n, end) =
            run_script(b"ping\r\necho hello world\nfoo\nquit\nping\n".to_vec(), 100);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "pong\nhello world\nERR unknown command 'foo' (commands: ping, echo <text>, quit)\nbye\n"
        );
        assert_eq!((n, end), (4, SessionEnd::Quit));
    }

    #[test]
    fn oversized_frame_gets_an_error_then_the_session_ends() {
        let mut input = Vec::new();
        write_request(&mut input, Form::Binary, &Request::Ping).unwrap();
        input.extend_from_slice(&protocol::header(kind::ECHO, 101));
        let (out, n, end) = run_script(input, 100);
        assert_eq!(n, 1);
        assert!(matches!(end, SessionEnd::Refused(ref r) if r.contains("101 bytes")));
        assert_eq!(out[..8], protocol::header(kind::PONG, 0));
        assert_eq!(out[10], kind::ERROR);
    }
}
