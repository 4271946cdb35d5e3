//! The codec and the session fuzzed: random and mutated byte streams go
//! through `server::serve_session` — the code every server runs — and the
//! output is checked against what the protocol allows:
//! * never a panic;
//! * never a single allocation beyond the frame limit (plus the framing's
//!   slack), however large a frame header claims to be;
//! * request by request, a reply in the request's own form that is the
//!   pong of a ping, the echo of an echo, `bye` for quit, or an error — and
//!   nothing else, in order, until the session ends.
//!
//! The seeds in `tests/fuzz-corpus/` run first, each also mutated at every
//! byte. More cases: `PROPTEST_CASES=200000 cargo test --release --test fuzz`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read, Write};

use ipclab::protocol::{self, Form, Message, Request, Scan, kind};
use ipclab::server::serve_session;
use proptest::prelude::*;

/// Records the largest single allocation made while armed, on this thread.
struct Watch;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        unsafe { System.realloc(p, l, new) }
    }
}

fn note(size: usize) {
    let _ = ARMED.try_with(|a| {
        if a.get() {
            let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
        }
    });
}

#[global_allocator]
static ALLOC: Watch = Watch;

const MAX: usize = 4096;

/// A link that reads `input` and collects what is written.
struct Script<'a> {
    input: &'a [u8],
    out: Vec<u8>,
}

impl Read for Script<'_> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        // Small, uneven pieces, as a socket might deliver them.
        let n = b.len().min(self.input.len()).min(1 + self.input.len() % 97);
        b[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Script<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The next complete message of `buf` (by the codec, as a peer would
/// parse it), and its length; None when the stream ends inside one.
fn next(buf: &[u8], max: usize, lines_only: bool) -> Option<(Message<'_>, usize)> {
    match protocol::scan_with(buf, 0, max, lines_only) {
        Scan::Complete(m, used) => Some((m, used)),
        Scan::Incomplete { .. } => None,
    }
}

/// Run one input through a session and check everything said above.
fn check(input: &[u8]) {
    let mut link = Script {
        input,
        out: Vec::new(),
    };
    LARGEST.with(|m| m.set(0));
    ARMED.with(|a| a.set(true));
    let (_, end) = serve_session(&mut link, MAX, std::time::Duration::from_millis(100));
    ARMED.with(|a| a.set(false));
    // The only error: the stream ended in the middle of a message.
    if let Err(e) = &end {
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }
    let largest = LARGEST.with(|m| m.get());
    assert!(
        largest <= 2 * (MAX + protocol::HEADER_LEN) + 64 * 1024,
        "an allocation of {largest} bytes for frames of at most {MAX}"
    );

    // Walk requests and replies side by side.
    let (mut req, mut rep) = (input, &link.out[..]);
    while let Some((msg, used)) = next(req, MAX, false) {
        req = &req[used..];
        let form = msg.form();
        // A reply is read with a generous limit: an echo is at most MAX.
        // In the request's form (a text echo's reply may start with 0xA5).
        let Some((reply, rused)) = next(rep, 2 * MAX + 64, form == Form::Text) else {
            panic!(
                "no reply to {msg:?}; output {:?}",
                String::from_utf8_lossy(&link.out)
            );
        };
        rep = &rep[rused..];
        assert_eq!(reply.form(), form, "a reply in another form than {msg:?}");
        let stop = match &msg {
            Message::Oversized { .. } | Message::Malformed(_) => {
                assert!(is_error(&reply), "{msg:?} got {reply:?}");
                true
            }
            _ => match protocol::parse_request(&msg) {
                Ok(Request::Ping) => {
                    assert!(is(&reply, kind::PONG, b"pong"), "ping got {reply:?}");
                    false
                }
                Ok(Request::Echo(p)) => {
                    match reply {
                        Message::Frame { kind: k, payload } => {
                            assert_eq!((k, payload), (kind::DATA, p))
                        }
                        Message::Line(l) => assert_eq!(l, p),
                        other => panic!("echo got {other:?}"),
                    }
                    false
                }
                Ok(Request::Quit) => {
                    assert!(is(&reply, kind::BYE, b"bye"), "quit got {reply:?}");
                    true
                }
                Err(_) => {
                    assert!(is_error(&reply), "{msg:?} got {reply:?}");
                    false
                }
            },
        };
        if stop {
            break;
        }
    }
    assert!(rep.is_empty(), "replies nobody asked for: {rep:?}");
}

fn is(m: &Message<'_>, k: u8, line: &[u8]) -> bool {
    match m {
        Message::Frame { kind, payload } => *kind == k && payload.is_empty(),
        Message::Line(l) => *l == line,
        _ => false,
    }
}

fn is_error(m: &Message<'_>) -> bool {
    match m {
        Message::Frame { kind, .. } => *kind == kind::ERROR,
        Message::Line(l) => l.starts_with(b"ERR "),
        _ => false,
    }
}

#[test]
fn corpus_seeds_and_their_mutations() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz-corpus");
    let mut seeds = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let seed = std::fs::read(e.unwrap().path()).unwrap();
        check(&seed);
        for i in 0..seed.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut m = seed.clone();
                m[i] ^= flip;
                check(&m);
            }
            check(&seed[..i]);
        }
        seeds += 1;
    }
    assert!(seeds >= 10, "the corpus is missing");
}

/// Pieces a stream is made of: valid and nearly valid requests.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let payload = proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        Just(b"ping\n".to_vec()),
        Just(b"quit\r\n".to_vec()),
        payload.clone().prop_map(|p| {
            let mut l = b"echo ".to_vec();
            l.extend(p.into_iter().filter(|&b| b != b'\n'));
            l.push(b'\n');
            l
        }),
        (any::<u8>(), payload.clone()).prop_map(|(k, p)| {
            let mut f = protocol::header(k % 5, p.len()).to_vec();
            f.extend(p);
            f
        }),
        // A header that lies about its length.
        (any::<u8>(), any::<u32>()).prop_map(|(k, len)| {
            let mut h = protocol::header(k % 5, 0);
            h[4..8].copy_from_slice(&len.to_le_bytes());
            h.to_vec()
        }),
        proptest::collection::vec(any::<u8>(), 0..32),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check(&input);
    }

    #[test]
    fn streams_of_requests_mutated(
        pieces in proptest::collection::vec(piece(), 0..24),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<usize>(),
    ) {
        let mut input: Vec<u8> = pieces.concat();
        for (at, x) in flips {
            if !input.is_empty() {
                let i = at % input.len();
                input[i] ^= x;
            }
        }
        if !input.is_empty() && cut % 3 == 0 {
            input.truncate(cut % input.len());
        }
        check(&input);
    }
}

#[test]
fn a_4_gib_header_allocates_nothing_large() {
    let mut input = protocol::header(kind::ECHO, 0).to_vec();
    input[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    input.extend(std::iter::repeat_n(0u8, 100_000));
    check(&input);
}
