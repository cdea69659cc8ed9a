//! The responder: a minimal HTTP/1.1 server over the metrics listener, non-blocking, bounded in
//! size, time and connections.

use super::*;

/// One scrape connection.
#[derive(Debug)]
pub(super) struct Scraper {
    pub(super) fd: OwnedFd,
    pub(super) deadline: Instant,
    pub(super) input: Vec<u8>,
    pub(super) output: Vec<u8>,
    pub(super) sent: usize,
    /// The answer is out and the write side shut: only waiting for the peer to close, so that
    /// unread bytes of its do not turn the close into a reset that loses the answer.
    pub(super) draining: bool,
    /// Its request is read; its answer waits for the next rendering.
    pub(super) deferred: bool,
    /// Its descriptor is in the epoll set (it is not while it waits for its answer).
    pub(super) watched: bool,
}

/// True for the epoll keys of the metrics endpoint.
pub fn owns_key(key: u64) -> bool {
    key == KEY_LISTENER || (KEY_SCRAPER..KEY_SCRAPER + MAX_SCRAPERS as u64).contains(&key)
}

/// An epoll event of the endpoint.
pub fn on_event(server: &mut Server, key: u64, flags: epoll::EventFlags) {
    if key == KEY_LISTENER {
        accept(server);
        return;
    }
    let i = (key - KEY_SCRAPER) as usize;
    let Some(m) = server.metrics.as_mut() else {
        return;
    };
    let too_soon = m.render_at() > Instant::now();
    let Some(Some(s)) = m.scrapers.get_mut(i) else {
        return;
    };
    if flags.contains(epoll::EventFlags::ERR) {
        m.scrapers[i] = None;
        return;
    }
    let step = if s.output.is_empty() {
        read_request(s)
    } else if s.draining {
        drain(s)
    } else {
        write(s)
    };
    match step {
        Step::Answer(200) if too_soon => {
            // Scraped again too soon: answered by `metrics_tick` once the interval is over,
            // and unwatched meanwhile (a peer's hang-up would wake the loop for nothing).
            s.deferred = true;
            settle(server, i, Step::Read);
        }
        Step::Answer(status) => answer_all(server, vec![(i, status)]),
        other => settle(server, i, other),
    }
}

/// Answers scrape connections `answers` (slot, status), rendering the metrics once if any
/// status is 200.
pub(super) fn answer_all(server: &mut Server, answers: Vec<(usize, u16)>) {
    if answers.is_empty() {
        return;
    }
    let body = if answers.iter().any(|&(_, status)| status == 200) {
        render(server)
    } else {
        String::new()
    };
    for (i, status) in answers {
        let Some(m) = server.metrics.as_mut() else {
            return;
        };
        if status == 200 {
            m.last_render = Some(Instant::now());
        }
        if let Some(k) = slot::SCRAPE_CODES.iter().position(|&c| c == status) {
            m.counters.add(slot::SCRAPES + k, 1);
        }
        let Some(s) = m.scrapers[i].as_mut() else {
            continue;
        };
        s.deferred = false;
        let body = if status == 200 { body.as_str() } else { "" };
        s.output = response(status, body, s.head_only());
        // Non-blocking: an answer of a few KiB fits in an empty socket buffer; the rest, if
        // any, goes when the socket has room.
        let step = write(s);
        settle(server, i, step);
    }
}

/// After `step`, watches scrape connection `i` for what it needs next, or closes it.
fn settle(server: &mut Server, i: usize, step: Step) {
    let Some(m) = server.metrics.as_mut() else {
        return;
    };
    let Some(s) = m.scrapers[i].as_mut() else {
        return;
    };
    let events = match step {
        Step::Close => {
            m.scrapers[i] = None;
            return;
        }
        _ if s.deferred => None,
        Step::WaitOut => Some(epoll::EventFlags::OUT),
        _ => Some(epoll::EventFlags::IN | epoll::EventFlags::RDHUP),
    };
    let data = epoll::EventData::new_u64(KEY_SCRAPER + i as u64);
    let ok = match (events, s.watched) {
        (None, true) => epoll::delete(&server.epoll, &s.fd).is_ok(),
        (None, false) => true,
        (Some(e), true) => epoll::modify(&server.epoll, &s.fd, data, e).is_ok(),
        (Some(e), false) => epoll::add(&server.epoll, &s.fd, data, e).is_ok(),
    };
    s.watched = events.is_some();
    if !ok {
        m.scrapers[i] = None;
    }
}

/// What a scrape connection needs next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// More of the request.
    Read,
    /// The request is complete (or hopeless): answer with this status.
    Answer(u16),
    /// The socket is full: wait until it can take more.
    WaitOut,
    /// Close it.
    Close,
}

impl Scraper {
    pub(super) fn head_only(&self) -> bool {
        self.input.starts_with(b"HEAD ")
    }
}

pub(super) fn accept(server: &mut Server) {
    loop {
        let Some(m) = server.metrics.as_mut() else {
            return;
        };
        // Every slot taken: the rest wait in the backlog; `metrics_tick` switches the listener
        // off until a slot is free.
        let Some(i) = m.scrapers.iter().position(Option::is_none) else {
            return;
        };
        let fd = match rustix::net::accept_with(
            &m.listener,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
            Err(rustix::io::Errno::AGAIN) => return,
            // The table is full, say: the connection waits in the backlog (the spare of the
            // client listener is not spent on a scraper), and the listener is off for a while
            // rather than wake the loop at once again.
            Err(_) => {
                m.paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                return;
            }
        };
        if epoll::add(
            &server.epoll,
            &fd,
            epoll::EventData::new_u64(KEY_SCRAPER + i as u64),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        )
        .is_err()
        {
            continue;
        }
        m.scrapers[i] = Some(Scraper {
            fd,
            deadline: Instant::now() + SCRAPE_TIMEOUT,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            draining: false,
            deferred: false,
            watched: true,
        });
    }
}

/// Reads what the socket has, up to [`MAX_REQUEST`] in all, and says whether the request is
/// complete.
pub(super) fn read_request(s: &mut Scraper) -> Step {
    let mut buf = [0u8; 2048];
    loop {
        match rustix::io::read(&s.fd, &mut buf) {
            Ok(0) => {
                // The peer sent all it will: answer what it sent, if anything.
                return if s.input.is_empty() {
                    Step::Close
                } else {
                    Step::Answer(judge(&s.input))
                };
            }
            Ok(n) => {
                let room = MAX_REQUEST - s.input.len();
                s.input.extend_from_slice(&buf[..n.min(room)]);
                if head_end(&s.input).is_some() {
                    return Step::Answer(judge(&s.input));
                }
                if n > room || s.input.len() >= MAX_REQUEST {
                    return Step::Answer(431);
                }
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Step::Read,
            Err(_) => return Step::Close,
        }
    }
}

/// Reads and drops what the peer still sends after the answer, until it closes.
pub(super) fn drain(s: &mut Scraper) -> Step {
    let mut buf = [0u8; 2048];
    loop {
        match rustix::io::read(&s.fd, &mut buf) {
            Ok(0) => return Step::Close,
            Ok(_) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Step::Read,
            Err(_) => return Step::Close,
        }
    }
}

/// Writes what the socket takes of the answer; once it is all out, shuts the write side.
pub(super) fn write(s: &mut Scraper) -> Step {
    while s.sent < s.output.len() {
        match rustix::net::send(&s.fd, &s.output[s.sent..], SendFlags::NOSIGNAL) {
            Ok(n) => s.sent += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Step::WaitOut,
            Err(_) => return Step::Close,
        }
    }
    let _ = rustix::net::shutdown(&s.fd, rustix::net::Shutdown::Write);
    s.draining = true;
    drain(s)
}

/// Where the request's head ends (after the blank line), if it has.
pub(super) fn head_end(input: &[u8]) -> Option<usize> {
    input
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| input.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))
}

/// The status a request gets: 200 for `GET /metrics` (or `HEAD`), 404 for another path, 405
/// for another method, 400 for anything that is not an HTTP/1.x request.
pub(super) fn judge(input: &[u8]) -> u16 {
    let Some(end) = head_end(input) else {
        return 400;
    };
    let Ok(head) = std::str::from_utf8(&input[..end]) else {
        return 400;
    };
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let Some(request_line) = lines.next() else {
        return 400;
    };
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return 400;
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return 400;
    }
    for line in lines.filter(|l| !l.is_empty()) {
        match line.split_once(':') {
            Some((name, _)) if !name.is_empty() && !name.contains(' ') => {}
            _ => return 400,
        }
    }
    if method != "GET" && method != "HEAD" {
        return 405;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path != "/metrics" {
        return 404;
    }
    200
}

pub(super) fn response(status: u16, body: &str, head_only: bool) -> Vec<u8> {
    let (reason, body, content_type) = match status {
        200 => (
            "OK",
            body,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        ),
        404 => (
            "Not Found",
            "Not found: luod serves metrics at /metrics\n",
            "text/plain; charset=utf-8",
        ),
        405 => (
            "Method Not Allowed",
            "Method not allowed: use GET\n",
            "text/plain; charset=utf-8",
        ),
        431 => (
            "Request Header Fields Too Large",
            "Request too large\n",
            "text/plain; charset=utf-8",
        ),
        _ => (
            "Bad Request",
            "Bad request: not an HTTP/1.x request\n",
            "text/plain; charset=utf-8",
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if status == 405 { "Allow: GET, HEAD\r\n" } else { "" }
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_are_judged() {
        assert_eq!(judge(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
        assert_eq!(judge(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(judge(b"HEAD /metrics HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(judge(b"GET / HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(judge(b"POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(judge(b"hello\r\n\r\n"), 400);
        assert_eq!(judge(b"GET /metrics SPDY/3\r\n\r\n"), 400);
        assert_eq!(judge(b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n"), 400);
        assert_eq!(judge(b"\xff\xfe\r\n\r\n"), 400);
        assert_eq!(judge(b"GET /metrics HTTP/1.1"), 400);
    }

    /// The request parser over inputs derived from real requests (every truncation, every
    /// bit flip, random overwrites) and random bytes: it answers one of its five statuses and
    /// never panics. (The parser is in the daemon binary, which the fuzz crate cannot link;
    /// this is its stable stand-in.)
    #[test]
    fn the_request_parser_survives_derived_and_random_inputs() {
        let seeds: [&[u8]; 3] = [
            b"GET /metrics HTTP/1.1\r\nHost: localhost:9464\r\nAccept: text/plain\r\n\r\n",
            b"HEAD /metrics?x=1 HTTP/1.0\n\n",
            b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let ok = |input: &[u8]| {
            let status = judge(input);
            assert!(
                [200, 400, 404, 405].contains(&status),
                "{input:?}: {status}"
            );
            let _ = head_end(input);
        };
        for seed in seeds {
            for n in 0..=seed.len() {
                ok(&seed[..n]);
            }
            for bit in 0..seed.len() * 8 {
                let mut v = seed.to_vec();
                v[bit / 8] ^= 1 << (bit % 8);
                ok(&v);
            }
            for _ in 0..2000 {
                let mut v = seed.to_vec();
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % v.len();
                    v[i] = next() as u8;
                }
                ok(&v);
            }
        }
        for _ in 0..2000 {
            let len = (next() % 300) as usize;
            let v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            ok(&v);
        }
    }
}
