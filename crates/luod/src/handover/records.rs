//! The daemon's own records in an image, whatever their encoding: [`DaemonState`] is what an
//! image's daemon part says (settings, the fd-table slots of the listener, the lock and every
//! connection), and [`KEEPER_PART`] what its keeper part says (the slot of the keeper's
//! channel, where the journal starts).
//!
//! luod writes the binary daemon part `luod-daemon-v2` (`luo_abi::daemon`, `docs/format.md`).
//! It reads that, and also the text part `luod-daemon-v1` that luod wrote before, so that an
//! upgrade from such a luod still works.

use anyhow::{Context, anyhow, bail, ensure};
use luo_abi::daemon::{
    ConnKind, DAEMON_COMPATIBLE, DaemonConn, DaemonLimits, DaemonPart, DaemonSettings,
    DaemonWriter, Direction, LastUpgrade,
};
use luo_abi::image::{Image, ImageWriter};

use super::DAEMON_PART;
use crate::conn::Cred;
use crate::server::Settings;

/// The text daemon part an older luod wrote.
pub const DAEMON_PART_V1: &str = "luod-daemon-v1";
/// The image part of the keeper's records.
pub const KEEPER_PART: &str = "luod-keeper";
/// Its compatible: 16 bytes, the keeper channel's fd-table slot (u32, `u32::MAX` for none),
/// four zero bytes, and the journal's first sequence number (u64), little-endian.
pub const KEEPER_PART_COMPATIBLE: &str = "luod-keeper-v1";

/// One connection, by fd-table slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnState {
    pub index: u32,
    /// [`crate::conn::Kind::code`].
    pub kind: u32,
    pub cred: Cred,
    /// For a session connection: its session is incoming.
    pub incoming: bool,
    /// For a session connection: its session's name.
    pub name: Vec<u8>,
}

/// What the daemon's records of an image say.
#[derive(Clone, Debug)]
pub struct DaemonState {
    pub settings: Settings,
    pub upgrades: u64,
    pub last_upgrade: (u32, u32),
    pub listener: u32,
    pub lock: u32,
    pub keeper: Option<u32>,
    pub journal_from: u64,
    pub conns: Vec<ConnState>,
    /// The metrics endpoint and counters (the image's `luod-metrics` part), if any.
    pub metrics: Option<crate::metrics::Record>,
}

impl DaemonState {
    /// The records of `image`, validated against its fd table.
    pub fn read(image: &Image<'_>) -> anyhow::Result<DaemonState> {
        let part = image
            .part(DAEMON_PART)
            .context("The image has no daemon part")?;
        let mut state = if part.compatible == DAEMON_COMPATIBLE {
            let p = DaemonPart::parse_part(part.compatible, part.data, image.fds().len())
                .map_err(|e| anyhow!("Invalid daemon part: {e}"))?;
            p.check_fd_types(image.fds())
                .map_err(|e| anyhow!("Invalid daemon part: {e}"))?;
            from_v2(&p)
        } else if part.compatible == DAEMON_PART_V1 {
            from_v1(part.data)?
        } else {
            bail!("Unknown daemon part {}", part.compatible);
        };
        if let Some(k) = image.part(KEEPER_PART) {
            ensure!(
                k.compatible == KEEPER_PART_COMPATIBLE,
                "Unknown keeper part {}",
                k.compatible
            );
            let d: [u8; 16] = k
                .data
                .try_into()
                .map_err(|_| anyhow!("The keeper part has {} bytes, not 16", k.data.len()))?;
            let slot = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            ensure!(
                d[4..8] == [0; 4],
                "The keeper part's reserved bytes are not zero"
            );
            if slot != u32::MAX {
                ensure!(
                    (slot as usize) < image.fds().len(),
                    "The keeper's channel is slot {slot}, outside the fd table"
                );
                state.keeper = Some(slot);
            }
            state.journal_from = u64::from_le_bytes(d[8..16].try_into().unwrap_or_default());
        }
        state.metrics = crate::metrics::Record::read(image)?;
        Ok(state)
    }

    /// Adds the daemon part (`luod-daemon-v2`) and the keeper part to `w`.
    pub fn write(&self, w: &mut ImageWriter) -> anyhow::Result<()> {
        let s = &self.settings;
        let socket = s
            .socket
            .to_str()
            .with_context(|| format!("The socket path {} is not UTF-8", s.socket.display()))?;
        let binary = s
            .binary
            .to_str()
            .with_context(|| format!("The binary path {} is not UTF-8", s.binary.display()))?;
        let settings = DaemonSettings {
            socket,
            binary,
            upgrades: self.upgrades,
            last_upgrade: LastUpgrade {
                rounds: self.last_upgrade.0,
                flags: self.last_upgrade.1,
            },
            pids: s.pids.clone(),
            limits: DaemonLimits {
                sessions: s.limits.sessions,
                files: s.limits.files,
                bytes: s.limits.bytes,
                fd_share: s.fds.share,
                fd_reserve: s.fds.reserve,
            },
        };
        let mut dw = DaemonWriter::new(&settings, self.listener, self.lock)
            .map_err(|e| anyhow!("Cannot write the daemon part: {e}"))?;
        for c in &self.conns {
            let kind = match c.kind {
                0 => ConnKind::Control,
                1 => ConnKind::Device,
                2 => ConnKind::Session {
                    direction: if c.incoming {
                        Direction::Incoming
                    } else {
                        Direction::Outgoing
                    },
                    name: &c.name,
                },
                3 => ConnKind::Detached,
                other => bail!("Unknown connection kind {other}"),
            };
            dw.add_conn(&DaemonConn {
                fd_index: c.index,
                kind,
                pid: c.cred.pid,
                uid: c.cred.uid,
                gid: c.cred.gid,
                last_request: None,
                outbox: Vec::new(),
            })
            .map_err(|e| anyhow!("Cannot write a connection record: {e}"))?;
        }
        w.add_part(DAEMON_PART, DAEMON_COMPATIBLE, &dw.finish())
            .map_err(|e| anyhow!("{e}"))?;
        let mut keeper = [0u8; 16];
        keeper[..4].copy_from_slice(&self.keeper.unwrap_or(u32::MAX).to_le_bytes());
        keeper[8..].copy_from_slice(&self.journal_from.to_le_bytes());
        w.add_part(KEEPER_PART, KEEPER_PART_COMPATIBLE, &keeper)
            .map_err(|e| anyhow!("{e}"))?;
        if let Some(m) = &self.metrics {
            m.write(w)?;
        }
        Ok(())
    }
}

fn from_v2(p: &DaemonPart<'_>) -> DaemonState {
    let s = &p.settings;
    let mut settings = Settings {
        socket: s.socket.into(),
        limits: Default::default(),
        fds: Default::default(),
        binary: s.binary.into(),
        pids: s.pids.clone(),
    };
    settings.limits.sessions = s.limits.sessions;
    settings.limits.files = s.limits.files;
    settings.limits.bytes = s.limits.bytes;
    settings.fds.share = s.limits.fd_share;
    settings.fds.reserve = s.limits.fd_reserve;
    let conns = p
        .conns
        .iter()
        .map(|c| {
            let (incoming, name) = match c.kind {
                ConnKind::Session { direction, name } => {
                    (direction == Direction::Incoming, name.to_vec())
                }
                _ => (false, Vec::new()),
            };
            ConnState {
                index: c.fd_index,
                kind: c.kind.code(),
                cred: Cred {
                    pid: c.pid,
                    uid: c.uid,
                    gid: c.gid,
                },
                incoming,
                name,
            }
        })
        .collect();
    DaemonState {
        settings,
        upgrades: s.upgrades,
        last_upgrade: (s.last_upgrade.rounds, s.last_upgrade.flags),
        listener: p.listener,
        lock: p.lock,
        keeper: None,
        journal_from: 0,
        conns,
        metrics: None,
    }
}

/// The text part of an older luod: `key=value` lines.
fn from_v1(data: &[u8]) -> anyhow::Result<DaemonState> {
    let text = std::str::from_utf8(data).context("Daemon part is not UTF-8")?;
    let mut st = DaemonState {
        settings: Settings {
            socket: Default::default(),
            limits: Default::default(),
            fds: Default::default(),
            binary: Default::default(),
            pids: Vec::new(),
        },
        upgrades: 0,
        last_upgrade: (0, 0),
        listener: u32::MAX,
        lock: u32::MAX,
        keeper: None,
        journal_from: 0,
        conns: Vec::new(),
        metrics: None,
    };
    let index = |v: &str| -> anyhow::Result<u32> { v.parse().context("descriptor index") };
    for line in text.lines() {
        let (k, v) = line.split_once('=').context("Malformed daemon part")?;
        let s = &mut st.settings;
        match k {
            "socket" => s.socket = v.into(),
            "binary" => s.binary = v.into(),
            "upgrades" => st.upgrades = v.parse()?,
            "last_upgrade" => {
                let (r, f) = v.split_once(' ').context("Malformed last_upgrade")?;
                st.last_upgrade = (r.parse()?, f.parse()?);
            }
            "pids" => {
                s.pids = v
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "limit.sessions" => s.limits.sessions = Some(v.parse()?),
            "limit.files" => s.limits.files = Some(v.parse()?),
            "limit.bytes" => s.limits.bytes = Some(v.parse()?),
            "limit.fds" => s.fds.share = Some(v.parse()?),
            "limit.fd_reserve" => s.fds.reserve = Some(v.parse()?),
            "listener" => st.listener = index(v)?,
            "lock" => st.lock = index(v)?,
            "conn" => {
                let f: Vec<&str> = v.split(' ').collect();
                ensure!(f.len() == 7, "Malformed connection record");
                st.conns.push(ConnState {
                    index: index(f[0])?,
                    kind: f[1].parse()?,
                    cred: Cred {
                        pid: f[2].parse()?,
                        uid: f[3].parse()?,
                        gid: f[4].parse()?,
                    },
                    incoming: f[5] != "out",
                    name: unhex(f[6]).context("name")?,
                });
            }
            _ => bail!("Unknown daemon setting {k}"),
        }
    }
    ensure!(
        st.listener != u32::MAX && st.lock != u32::MAX,
        "No listener or no lock in the daemon part"
    );
    Ok(st)
}

/// Lowercase hex back to bytes.
fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}
