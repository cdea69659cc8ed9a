//! The metrics endpoint (`luod --metrics ADDR`), with real components: a real luod, real
//! client connections preserving real memfds, a real upgrade and a real `kill -9` of the
//! server, scraped over plain HTTP with a `TcpStream` (or a `UnixStream`), the text checked
//! by Prometheus's own `promtool check metrics` (Debian package `prometheus`; without it that
//! check is skipped with a message, and fails under `LUO_REQUIRE_ALL=1`) and its values
//! against the STATUS the client reads.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Luod, Proc, STEP, child_socket, hear, memfd_with, say};
use luo_client::{Control, Device};

/// Children run through this test; in the parent it does nothing.
#[test]
fn child_role() {
    common::child_entry(|role| match role {
        "other-uid" => other_uid(),
        other => panic!("unknown role {other}"),
    });
}

/// Another uid: two sessions, one handed off, and its own STATUS.
fn other_uid() {
    let dev = luo_client::Device::open_at(&child_socket()).expect("device");
    let kept = dev.create_session("mine").expect("create");
    kept.preserve(memfd_with("mine", &[1u8; 4096]), 1)
        .expect("preserve");
    let gone = dev.create_session("handed").expect("create");
    gone.preserve(memfd_with("h", &[2u8; 8192]), 1)
        .expect("preserve");
    gone.preserve(memfd_with("h", &[3u8; 4096]), 2)
        .expect("preserve");
    gone.handoff().expect("handoff");
    let ctl = Control::connect_at(&child_socket()).expect("connect");
    let st = ctl.status().expect("status");
    say(&format!(
        "STATUS {} {} {} {}",
        st.sessions_outgoing, st.sessions_incoming, st.files, st.bytes
    ));
    let _ = hear();
}

/// A port nobody listens on now (bound and let go; the tests' luods bind it at once).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Starts luod with metrics on a fresh loopback port.
fn luod_with_metrics(tag: &str) -> (Luod, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let luod = Luod::start_with(tag, &["--metrics", &addr]);
    (luod, addr)
}

/// Sends `request` and reads the whole answer: its status code and body.
fn http_over(s: impl Read + Write, request: &[u8]) -> (u16, String) {
    try_http_over(s, request).expect("an answer")
}

/// [`http_over`], or the error of a connection cut before its answer.
fn try_http_over(mut s: impl Read + Write, request: &[u8]) -> std::io::Result<(u16, String)> {
    s.write_all(request)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    if answer.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let text = String::from_utf8(answer).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP head");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|l| l.trim().parse().ok())
        .expect("Content-Length");
    assert_eq!(length, body.len(), "Content-Length is the body's length");
    Ok((code, body.to_owned()))
}

fn http(addr: &str, request: &[u8]) -> (u16, String) {
    let s = std::net::TcpStream::connect(addr).expect("connect to the metrics address");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.set_write_timeout(Some(Duration::from_secs(10))).ok();
    http_over(s, request)
}

const GET: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n";

/// One scrape; its text.
fn scrape(addr: &str) -> String {
    let (code, body) = http(addr, GET);
    assert_eq!(code, 200, "GET /metrics: {body}");
    body
}

/// The samples of a scrape, by series (`name{labels}` as written).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series value");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// The sum of metric `name`'s series whose labels include every one of `with`.
fn sum(s: &HashMap<String, f64>, name: &str, with: &[&str]) -> f64 {
    s.iter()
        .filter(|(k, _)| {
            let (n, labels) = k.split_once('{').unwrap_or((k, ""));
            n == name && with.iter().all(|w| labels.contains(w))
        })
        .map(|(_, v)| v)
        .sum()
}

/// True if promtool is here; otherwise reports the skip (a failure under LUO_REQUIRE_ALL=1).
fn have_promtool(test: &str) -> bool {
    let ok = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        common::skip(
            test,
            "needs promtool (Debian package prometheus; scripts/setup installs it)",
        );
    }
    ok
}

/// `promtool check metrics` on `text`: the exposition must parse and pass its lint.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- the text ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The metrics agree with STATUS, read on `ctl`, a connection that stays open (so that both
/// count it among the descriptors). STATUS's incoming count includes retrieved and finished
/// sessions.
fn assert_agrees_with_status(luod: &Luod, ctl: &Control, addr: &str) -> HashMap<String, f64> {
    let st = ctl.status().expect("status");
    luod.note_pid(st.pid as i32);
    let m = samples(&scrape(addr));
    let states = ["incoming", "retrieved", "finished"];
    let incoming: f64 = states
        .iter()
        .map(|s| sum(&m, "luod_sessions", &[&format!("state=\"{s}\"")]))
        .sum();
    assert_eq!(
        sum(&m, "luod_sessions", &["state=\"outgoing\""]),
        st.sessions_outgoing as f64
    );
    assert_eq!(incoming, st.sessions_incoming as f64);
    assert_eq!(sum(&m, "luod_files", &[]), st.files as f64);
    assert_eq!(sum(&m, "luod_preserved_bytes", &[]), st.bytes as f64);
    assert_eq!(sum(&m, "luod_upgrades_total", &[]), st.upgrades as f64);
    assert_eq!(
        sum(&m, "luod_server_restarts_total", &[]),
        f64::from(st.restarts)
    );
    assert_eq!(
        sum(&m, "luod_last_recovery_seconds", &[]),
        st.last_recovery_us as f64 / 1e6
    );
    assert_eq!(sum(&m, "luod_descriptors_limit", &[]), st.fd_limit as f64);
    assert_eq!(sum(&m, "luod_descriptors_used", &[]), st.fd_used as f64);
    assert_eq!(sum(&m, "luod_generation", &[]), st.generation as f64);
    assert_eq!(
        sum(&m, "luod_last_upgrade_rounds", &[]),
        f64::from(st.last_upgrade_rounds)
    );
    assert_eq!(sum(&m, "luod_copy_bytes_total", &[]), st.copy_bytes as f64);
    m
}

/// The load: `sessions` sessions of three memfds each; every third handed off, and of those
/// every other one retrieved again, and of those every other one finished. Returns the
/// sessions still open (they must stay open to stay outgoing) and the preserves made.
fn load(dev: &Device, tag: &str, sessions: usize) -> (Vec<luo_client::Session>, u64) {
    let mut open = Vec::new();
    let mut preserves = 0;
    let mut handed = Vec::new();
    for i in 0..sessions {
        let name = format!("{tag}-{i}");
        let s = dev.create_session(&name).expect("create");
        for t in 0..3u64 {
            let fd: OwnedFd = memfd_with("m", &vec![i as u8; 4096 * (t as usize + 1)]);
            s.preserve(&fd, t + 1).expect("preserve");
            preserves += 1;
        }
        if i % 3 == 0 {
            s.handoff().expect("handoff");
            handed.push(name);
        } else {
            open.push(s);
        }
    }
    for (k, name) in handed.iter().enumerate() {
        if k % 2 == 0 {
            let s = dev.retrieve_session(name).expect("retrieve");
            if k % 4 == 0 {
                for t in 1..=3 {
                    s.retrieve(t).expect("retrieve fd");
                }
                s.finish().expect("finish");
            }
            open.push(s);
        }
    }
    (open, preserves)
}

#[test]
fn metrics_match_status_through_a_load_of_preserves_and_an_upgrade() {
    let test = "metrics_match_status_through_a_load_of_preserves_and_an_upgrade";
    // Without promtool the text is not linted (a failure under LUO_REQUIRE_ALL=1); the rest runs.
    let promtool = have_promtool(test);
    let (luod, addr) = luod_with_metrics("metrics-load");
    let first = scrape(&addr);
    if promtool {
        promtool_check(&first);
    }

    // Scrapes run all along on a thread of their own: each one answered is a whole 200. A
    // scrape whose request had not reached the old server when it handed over is cut (the
    // successor cannot take over a connection the old one accepted): at most one here.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let (stop, addr) = (std::sync::Arc::clone(&stop), addr.clone());
        std::thread::spawn(move || {
            let (mut n, mut cut) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s = std::net::TcpStream::connect(&addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                match try_http_over(s, GET) {
                    Ok((code, body)) => {
                        assert_eq!(code, 200, "a scrape during the load: {body}");
                        n += 1;
                    }
                    Err(e) => {
                        eprintln!("a scrape was cut: {e}");
                        cut += 1;
                    }
                }
            }
            (n, cut)
        })
    };
    let dev = luod.device();
    let ctl = luod.control();
    let (open, preserves) = load(&dev, "a", 30);
    let before = assert_agrees_with_status(&luod, &ctl, &addr);
    assert_eq!(
        sum(
            &before,
            "luod_requests_total",
            &["op=\"preserve_fd\"", "errno=\"none\""]
        ),
        preserves as f64
    );
    assert!(sum(&before, "luod_sessions", &["state=\"finished\""]) > 0.0);
    assert!(sum(&before, "luod_sessions", &["state=\"retrieved\""]) > 0.0);
    assert!(sum(&before, "luod_sessions", &["state=\"incoming\""]) > 0.0);
    // A refused request is counted with its errno.
    assert_eq!(
        common::errno(dev.create_session("a-1")),
        luo_abi::Errno::EEXIST
    );

    luod.control().upgrade(None).expect("upgrade");
    let (open2, preserves2) = load(&dev, "b", 12);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (scrapes, cut) = scraper.join().expect("the scraper thread");
    assert!(scrapes > 0);
    assert!(cut <= 1, "{cut} scrapes cut by one upgrade");

    let after = assert_agrees_with_status(&luod, &ctl, &addr);
    let text = scrape(&addr);
    if promtool {
        promtool_check(&text);
    }
    assert_eq!(sum(&after, "luod_upgrades_total", &[]), 1.0);
    assert_eq!(sum(&after, "luod_upgrade_blackout_seconds_count", &[]), 1.0);
    assert!(sum(&after, "luod_last_upgrade_blackout_seconds", &[]) > 0.0);
    assert_eq!(
        sum(
            &after,
            "luod_requests_total",
            &["op=\"upgrade\"", "errno=\"none\""]
        ),
        1.0
    );
    // Counted by the old server and the new one, in one series that did not reset.
    assert_eq!(
        sum(
            &after,
            "luod_requests_total",
            &["op=\"preserve_fd\"", "errno=\"none\""]
        ),
        (preserves + preserves2) as f64
    );
    assert_eq!(
        sum(
            &after,
            "luod_requests_total",
            &["op=\"create_session\"", "errno=\"EEXIST\""]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &after,
            "luod_request_duration_seconds_count",
            &["op=\"preserve_fd\""]
        ),
        (preserves + preserves2) as f64
    );
    assert!(
        sum(&after, "luod_metrics_requests_total", &["code=\"200\""]) >= f64::from(scrapes),
        "every scrape is counted, across the upgrade"
    );
    assert!(!text.contains("a-1"), "no session names in the labels");
    drop((open, open2));
}

#[test]
fn metrics_keep_serving_after_the_server_is_killed_and_do_not_go_back() {
    let (luod, addr) = luod_with_metrics("metrics-kill");
    let dev = luod.device();
    let ctl = luod.control();
    let (open, preserves) = load(&dev, "k", 6);
    let before = samples(&scrape(&addr));
    let st = luod.status();
    let pid = rustix::process::Pid::from_raw(st.pid as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill -9");
    let t0 = Instant::now();
    let st2 = loop {
        if let Ok(s) = Control::connect_at(&luod.socket).and_then(|c| c.status())
            && s.pid != st.pid
        {
            luod.note_pid(s.pid as i32);
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no new server:\n{}",
            luod.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(st2.restarts, 1);
    let after = assert_agrees_with_status(&luod, &ctl, &addr);
    assert_eq!(sum(&after, "luod_server_restarts_total", &[]), 1.0);
    assert_eq!(sum(&after, "luod_recovery_seconds_count", &[]), 1.0);
    assert_eq!(
        sum(
            &after,
            "luod_requests_total",
            &["op=\"preserve_fd\"", "errno=\"none\""]
        ),
        preserves as f64,
        "the counters of the server that died are the new one's"
    );
    for (series, v) in &before {
        if series.starts_with("luod_requests_total") {
            assert!(
                after.get(series).is_some_and(|a| a >= v),
                "{series} went back"
            );
        }
    }
    // The sessions are all there and still served.
    assert_eq!(st2.files, st.files);
    drop(open);
}

#[test]
fn junk_gets_400_another_path_404_and_neither_a_silent_nor_a_flooding_scraper_stalls_luod() {
    let (luod, addr) = luod_with_metrics("metrics-junk");
    assert_eq!(http(&addr, b"this is not http\r\n\r\n").0, 400);
    assert_eq!(
        http(
            &addr,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"
        )
        .0,
        400
    );
    assert_eq!(
        http(&addr, b"GET /metrics HTTP/1.1\r\nno header here\r\n\r\n").0,
        400
    );
    assert_eq!(http(&addr, b"GET / HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(&addr, b"GET /metricsx HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(&addr, b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    // A request that never ends is cut at the size bound.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 << 10));
    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let _ = s.write_all(&huge);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 431 "),
        "{:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(80)])
    );
    drop(s);
    // Scrapers that connect and send nothing hold every slot (4); a fifth scrape waits in the
    // backlog and is answered once they are cut at the time bound; clients are served
    // meanwhile.
    let silent: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(&addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let fifth = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let (code, _) = http(&addr, GET);
            (code, Instant::now())
        })
    };
    let ctl = luod.control();
    let t1 = Instant::now();
    for _ in 0..100 {
        ctl.ping().expect("ping");
    }
    assert!(
        t1.elapsed() < Duration::from_secs(2),
        "100 pings took {:?} beside silent scrapers",
        t1.elapsed()
    );
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(15))).ok();
        let mut buf = [0u8; 16];
        // Closed without an answer (0), or reset: either way not held past the bound.
        let _ = s.read(&mut buf);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "silent scrapers were held {:?}",
        t0.elapsed()
    );
    let (code, answered) = fifth.join().expect("the fifth scrape");
    assert_eq!(code, 200, "the scrape that waited in the backlog");
    assert!(answered.duration_since(t0) < Duration::from_secs(8));
    // And the endpoint still answers.
    let m = samples(&scrape(&addr));
    assert!(sum(&m, "luod_metrics_requests_total", &["code=\"400\""]) >= 3.0);
    assert!(sum(&m, "luod_metrics_requests_total", &["code=\"404\""]) >= 2.0);
    assert_eq!(
        sum(&m, "luod_metrics_requests_total", &["code=\"431\""]),
        1.0
    );
    ctl.ping().expect("luod serves");
}

#[test]
fn a_metrics_address_other_than_loopback_is_refused_with_a_clear_error() {
    let dir = common::temp_dir("metrics-refused");
    for bad in ["0.0.0.0:9464", "[::]:9464", "192.0.2.1:9464"] {
        let out = Command::new(common::luod_binary())
            .arg("--socket")
            .arg(dir.join("luod.sock"))
            .args(["--metrics", bad])
            .env_remove("LUOD_SOCKET")
            .env_remove("LUOD_CONFIG")
            .stdin(Stdio::null())
            .output()
            .expect("run luod");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} accepted");
        assert!(
            err.contains(&format!("Refusing metrics address {bad}"))
                && err.contains("not a loopback address"),
            "{bad}: {err}"
        );
        assert!(!dir.join("luod.sock").exists(), "nothing was served");
    }
    // The config file's key is checked the same way.
    let config = dir.join("luod.toml");
    std::fs::write(&config, "metrics = \"10.1.2.3:9464\"\n").expect("config");
    let out = Command::new(common::luod_binary())
        .arg("--socket")
        .arg(dir.join("luod.sock"))
        .arg("--config")
        .arg(&config)
        .env_remove("LUOD_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run luod");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not a loopback address"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn metrics_on_a_unix_socket_survive_an_upgrade_and_go_at_shutdown() {
    let dir = common::temp_dir("metrics-unix-sock");
    let path = dir.join("metrics.sock");
    let arg = format!("unix:{}", path.display());
    let luod = Luod::start_with("metrics-unix", &["--metrics", &arg]);
    let get = |p: &Path| {
        let s = std::os::unix::net::UnixStream::connect(p).expect("connect the metrics socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        http_over(s, GET)
    };
    assert_eq!(get(&path).0, 200);
    luod.control().upgrade(None).expect("upgrade");
    luod.status();
    let (code, body) = get(&path);
    assert_eq!(code, 200);
    assert!(body.contains("luod_upgrades_total 1\n"), "{body}");
    // A reboot emulation cuts every client connection, not the metrics socket; the upgrade
    // count is the new generation's, the request counters go on.
    let before = samples(&body);
    luod.control().reboot().expect("reboot");
    let t0 = Instant::now();
    while luod.control().status().map(|s| s.generation) != Ok(1) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{}",
            luod.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    luod.status();
    let (code, body) = get(&path);
    assert_eq!(code, 200);
    let after = samples(&body);
    assert_eq!(sum(&after, "luod_generation", &[]), 1.0);
    assert_eq!(sum(&after, "luod_upgrades_total", &[]), 0.0);
    assert!(
        sum(&after, "luod_requests_total", &["op=\"upgrade\""])
            >= sum(&before, "luod_requests_total", &["op=\"upgrade\""])
    );
    assert_eq!(sum(&after, "luod_requests_total", &["op=\"reboot\""]), 1.0);
    drop(luod);
    assert!(!path.exists(), "the metrics socket is removed at shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_copy_engines_counters_match_status_and_outlive_an_upgrade() {
    let (luod, addr) = luod_with_metrics("metrics-copy");
    let dev = luod.device();
    let ctl = luod.control();
    let s = dev.create_session("vm").expect("create");
    let ram = memfd_with("ram", &vec![7u8; 4 << 20]);
    s.preserve(&ram, 1).expect("preserve");
    s.handoff().expect("handoff");
    let moved = ctl
        .migrate("vm", 1, 4096, None)
        .expect("migrate onto 4 KiB pages");
    assert_eq!(moved.bytes, 4 << 20);
    let m = assert_agrees_with_status(&luod, &ctl, &addr);
    let st = ctl.status().expect("status");
    assert_eq!(st.copy_bytes, 4 << 20);
    assert_eq!(sum(&m, "luod_copy_copies_total", &[]), 1.0);
    assert_eq!(sum(&m, "luod_copy_units_total", &[]), st.copy_units as f64);
    assert_eq!(
        sum(&m, "luod_copy_units_total", &["path=\"fallback\""]),
        st.copy_units_fallback as f64
    );
    assert!(sum(&m, "luod_copy_seconds_total", &[]) > 0.0);
    assert_eq!(
        sum(
            &m,
            "luod_requests_total",
            &["op=\"migrate\"", "errno=\"none\""]
        ),
        1.0
    );

    // STATUS's copy counters are the serving server's; the metrics' go on across servers.
    ctl.upgrade(None).expect("upgrade");
    let st = ctl.status().expect("status");
    luod.note_pid(st.pid as i32);
    assert_eq!(st.copy_bytes, 0, "a new server's copy engine");
    let m = samples(&scrape(&addr));
    assert_eq!(sum(&m, "luod_copy_bytes_total", &[]), (4 << 20) as f64);
    assert_eq!(sum(&m, "luod_copy_copies_total", &[]), 1.0);
}

#[test]
fn scrapes_in_a_loop_are_rendered_at_most_ten_times_a_second_and_clients_are_served() {
    let (luod, addr) = luod_with_metrics("metrics-loop");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (stop, addr) = (std::sync::Arc::clone(&stop), addr.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    assert_eq!(http(&addr, GET).0, 200);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let ctl = luod.control();
    let mut slowest = Duration::ZERO;
    while t0.elapsed() < Duration::from_secs(1) {
        let t = Instant::now();
        ctl.ping().expect("ping");
        slowest = slowest.max(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes: u32 = threads
        .into_iter()
        .map(|t| t.join().expect("scraper"))
        .sum();
    let elapsed = t0.elapsed();
    // One rendering per 100 ms at most (and the first at once), whatever the scrapers do;
    // each answers every scrape waiting for it, one per slot at most.
    let most = (elapsed.as_millis() / 100 + 2) as u32 * 4;
    assert!(
        scrapes <= most,
        "{scrapes} scrapes answered in {elapsed:?}, more than {most}"
    );
    assert!(scrapes >= 5, "only {scrapes} scrapes in {elapsed:?}");
    assert!(
        slowest < Duration::from_millis(500),
        "a ping took {slowest:?} while scrapers looped"
    );
}

#[test]
fn each_uid_has_its_own_series_and_they_match_what_status_shows_that_uid() {
    let test = "each_uid_has_its_own_series_and_they_match_what_status_shows_that_uid";
    if !common::require_root(test) {
        return;
    }
    let (luod, addr) = luod_with_metrics("metrics-uids");
    let dev = luod.device();
    let root = dev.create_session("root-0").expect("create");
    root.preserve(memfd_with("r", &[0u8; 65536]), 1)
        .expect("preserve");
    let mut cmd = common::role_command("child_role", "other-uid", &luod.socket);
    cmd.uid(65534).gid(65534);
    let mut child = Proc::spawn("uid 65534", cmd);
    let own: Vec<f64> = child
        .expect("STATUS ")
        .split(' ')
        .map(|v| v.parse().expect("a number"))
        .collect();
    let m = samples(&scrape(&addr));
    let of =
        |name: &str, state: &str| sum(&m, name, &["uid=\"65534\"", &format!("state=\"{state}\"")]);
    assert_eq!(of("luod_sessions", "outgoing"), own[0]);
    assert_eq!(of("luod_sessions", "incoming"), own[1]);
    assert_eq!(
        sum(&m, "luod_files", &["uid=\"65534\""]),
        own[2],
        "files of uid 65534"
    );
    assert_eq!(sum(&m, "luod_preserved_bytes", &["uid=\"65534\""]), own[3]);
    assert_eq!(of("luod_files", "incoming"), 2.0);
    assert_eq!(of("luod_preserved_bytes", "incoming"), 12288.0);
    assert_eq!(
        sum(
            &m,
            "luod_preserved_bytes",
            &["uid=\"0\"", "state=\"outgoing\""]
        ),
        65536.0
    );
    // Its device, its two session descriptors and its control connection.
    assert_eq!(sum(&m, "luod_connections", &["uid=\"65534\""]), 4.0);
    child.close_stdin();
    child.wait_ok(STEP);
    drop(root);
}
