//! The metrics themselves: a snapshot of the server and the counters, encoded by
//! `prometheus-client` in the Prometheus text format.

use super::*;

// ---------------------------------------------------------------------------------------------
// The metrics.

/// A histogram's buckets (upper bound, count in it: not cumulative), sum and count.
#[derive(Clone, Debug, Default)]
pub(super) struct Histogram {
    pub(super) buckets: Vec<(f64, u64)>,
    pub(super) sum: f64,
    pub(super) count: u64,
}

/// A labelled value.
pub(super) type Sample<T> = (Vec<(&'static str, String)>, T);

/// One metric family as it is encoded.
#[derive(Debug)]
pub(super) enum Values {
    Gauge(Vec<Sample<f64>>),
    Counter(Vec<Sample<u64>>),
    Histogram(Vec<Sample<Histogram>>),
    /// A counter of seconds, without labels.
    Seconds(f64),
}

/// Everything one scrape shows, taken from the server at once.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    families: Vec<(&'static str, &'static str, Values)>,
}

impl Snapshot {
    pub(super) fn gauge(&mut self, name: &'static str, help: &'static str, v: f64) {
        self.families
            .push((name, help, Values::Gauge(vec![(Vec::new(), v)])));
    }
    pub(super) fn counter(&mut self, name: &'static str, help: &'static str, v: u64) {
        self.families
            .push((name, help, Values::Counter(vec![(Vec::new(), v)])));
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, values) in &self.families {
            match values {
                Values::Gauge(samples) => {
                    let mut e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                    for (labels, v) in samples {
                        if labels.is_empty() {
                            e.encode_gauge(v)?;
                        } else {
                            e.encode_family(labels)?.encode_gauge(v)?;
                        }
                    }
                }
                Values::Counter(samples) => {
                    let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                    for (labels, v) in samples {
                        if labels.is_empty() {
                            e.encode_counter::<NoLabelSet, _, u64>(v, None)?;
                        } else {
                            e.encode_family(labels)?
                                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
                        }
                    }
                }
                Values::Seconds(v) => {
                    encoder
                        .encode_descriptor(name, help, None, MetricType::Counter)?
                        .encode_counter::<NoLabelSet, _, u64>(v, None)?;
                }
                Values::Histogram(samples) => {
                    let mut e =
                        encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
                    for (labels, h) in samples {
                        if labels.is_empty() {
                            e.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
                        } else {
                            e.encode_family(labels)?
                                .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The state a session is in, as a label.
pub(super) fn state_label(d: Direction) -> &'static str {
    match d {
        Direction::Outgoing => "outgoing",
        Direction::Incoming { finished: true, .. } => "finished",
        Direction::Incoming {
            retrieved: true, ..
        } => "retrieved",
        Direction::Incoming { .. } => "incoming",
    }
}

/// The metrics text of `server` now.
pub fn render(server: &Server) -> String {
    let snap = snapshot(server);
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(snap));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        warn!(error = %e, "cannot encode the metrics");
    }
    out
}

pub(super) fn snapshot(server: &Server) -> Snapshot {
    let mut s = Snapshot::default();
    let info = vec![(vec![("version", crate::status::VERSION.to_owned())], 1.0)];
    s.families.push((
        "luod_build_info",
        "Always 1; the label is the version of the luod that serves.",
        Values::Gauge(info),
    ));
    s.gauge(
        "luod_generation",
        "Reboots (luoctl reboot) since luod started, as STATUS reports it.",
        server.engine.generation() as f64,
    );
    s.gauge(
        "luod_server_uptime_seconds",
        "Seconds since the server that serves now started (it changes with upgrades and recoveries).",
        server.started.elapsed().as_secs_f64(),
    );

    // Sessions, files and bytes per uid and state.
    let mut by: std::collections::BTreeMap<(u32, &'static str), (u64, u64, u64)> =
        Default::default();
    for info in server.engine.sessions() {
        let e = by
            .entry((info.owner, state_label(info.direction)))
            .or_default();
        e.0 += 1;
        e.1 += info.files as u64;
        e.2 += info.bytes;
    }
    let labelled = |f: fn(&(u64, u64, u64)) -> u64| -> Vec<Sample<f64>> {
        by.iter()
            .map(|(&(uid, state), v)| {
                (
                    vec![("uid", uid.to_string()), ("state", state.to_owned())],
                    f(v) as f64,
                )
            })
            .collect()
    };
    s.families.push((
        "luod_sessions",
        "Sessions, by owner uid and state (outgoing, incoming, retrieved, finished).",
        Values::Gauge(labelled(|v| v.0)),
    ));
    s.families.push((
        "luod_files",
        "Preserved files in those sessions, by owner uid and session state.",
        Values::Gauge(labelled(|v| v.1)),
    ));
    s.families.push((
        "luod_preserved_bytes",
        "Bytes of memory the preserved files keep alive, by owner uid and session state.",
        Values::Gauge(labelled(|v| v.2)),
    ));
    let mut conns: std::collections::BTreeMap<u32, u64> = Default::default();
    for c in server.conns.values() {
        *conns.entry(c.cred.uid).or_default() += 1;
    }
    s.families.push((
        "luod_connections",
        "Client connections (control, device and session descriptors), by uid.",
        Values::Gauge(
            conns
                .iter()
                .map(|(uid, n)| (vec![("uid", uid.to_string())], *n as f64))
                .collect(),
        ),
    ));

    // Descriptors.
    s.gauge(
        "luod_descriptors_used",
        "Descriptors luod holds, as STATUS's fd_used counts them (scrape connections apart).",
        server.fds_used() as f64,
    );
    s.gauge(
        "luod_descriptors_limit",
        "luod's descriptor limit (RLIMIT_NOFILE).",
        server.fd_limit as f64,
    );
    s.gauge(
        "luod_descriptor_budget",
        "Descriptors that may be charged to uids: the limit less luod's own 64.",
        server.budget.total as f64,
    );
    s.gauge(
        "luod_descriptor_share",
        "Most descriptors one uid other than root and luod's own may hold (--max-fds).",
        server.budget.share as f64,
    );
    s.gauge(
        "luod_descriptor_reserve",
        "Descriptors only root and luod's own uid may use (--fd-reserve).",
        server.budget.reserve as f64,
    );

    // Upgrades, restarts, recoveries.
    s.counter(
        "luod_upgrades",
        "Upgrades in this generation (STATUS's upgrades; a reboot emulation starts it again).",
        server.upgrades,
    );
    s.gauge(
        "luod_last_upgrade_rounds",
        "Successors the last upgrade started (0: no upgrade yet).",
        f64::from(server.last_upgrade.0),
    );
    s.counter(
        "luod_server_restarts",
        "Servers the keeper started after one died (STATUS's restarts).",
        u64::from(server.keeper.restarts),
    );
    s.gauge(
        "luod_last_recovery_seconds",
        "The keeper's figure for the last restart: from the death it saw to the new server's start (STATUS's last_recovery_us).",
        server.keeper.last_recovery_us as f64 / 1e6,
    );
    if let Some(m) = &server.metrics {
        let c = &m.counters;
        s.counter(
            "luod_upgrade_failures",
            "Upgrades that failed; the old server kept serving.",
            c.get(slot::UPGRADE_FAILURES),
        );
        s.gauge(
            "luod_last_upgrade_blackout_seconds",
            "The last upgrade's blackout: from the old server's last request to the new one serving.",
            c.get(slot::LAST_BLACKOUT) as f64 / 1e9,
        );
        s.families.push((
            "luod_upgrade_blackout_seconds",
            "Upgrade blackouts: from the old server's last request to the new one serving.",
            Values::Histogram(vec![(
                Vec::new(),
                c.histogram(slot::BLACKOUT, PAUSE_BUCKETS),
            )]),
        ));
        s.families.push((
            "luod_recovery_seconds",
            "Recoveries after a server died: from the death the keeper saw to the new server serving.",
            Values::Histogram(vec![(Vec::new(), c.histogram(slot::RECOVERY, PAUSE_BUCKETS))]),
        ));

        // Requests.
        let mut requests = Vec::new();
        let mut latency = Vec::new();
        for (op, &(name, _)) in OPS.iter().enumerate() {
            for e in 0..ERRNO_SLOTS {
                let n = c.get(slot::REQUESTS + op * ERRNO_SLOTS + e);
                if n > 0 {
                    requests.push((vec![("op", name.to_owned()), ("errno", errno_label(e))], n));
                }
            }
            let h = c.histogram(slot::LATENCY + op * slot::LATENCY_LEN, LATENCY_BUCKETS);
            if h.count > 0 {
                latency.push((vec![("op", name.to_owned())], h));
            }
        }
        s.families.push((
            "luod_requests",
            "Requests answered, by operation and errno (none: success).",
            Values::Counter(requests),
        ));
        s.families.push((
            "luod_request_duration_seconds",
            "Time from reading a request to sending its reply, by operation.",
            Values::Histogram(latency),
        ));
        s.gauge(
            "luod_metrics_connections",
            "Scrape connections open (this one included), not counted in luod_descriptors_used.",
            m.scrapers() as f64,
        );
        let scrapes = slot::SCRAPE_CODES
            .iter()
            .enumerate()
            .map(|(k, code)| {
                (
                    vec![("code", code.to_string())],
                    c.get(slot::SCRAPES + k) + u64::from(*code == 200),
                )
            })
            .collect();
        s.families.push((
            "luod_metrics_requests",
            "HTTP requests the metrics endpoint answered, by status code (this one included).",
            Values::Counter(scrapes),
        ));

        // The copy engine: the servers' before this one, and this one's.
        let base: Vec<u64> = (0..slot::COPY_LEN).map(|i| c.get(slot::COPY + i)).collect();
        let (was, is) = (
            copy_fields(&m.copy_folded),
            copy_fields(&server.copy_stats()),
        );
        let v = |i: usize| base[i] + is[i].saturating_sub(was[i]);
        s.counter(
            "luod_copy_copies",
            "Copies the copy engine made (one per migration).",
            v(0),
        );
        let batch = |path: &str, n| (vec![("path", path.to_owned())], n);
        s.families.push((
            "luod_copy_batches",
            "Batches the copy engine copied, by path: offloaded to a copy channel, kept on the CPU by the driver's policy, on the CPU for want of a driver.",
            Values::Counter(vec![
                batch("offloaded", v(2)),
                batch("cpu_policy", v(3)),
                batch("cpu_no_driver", v(4)),
            ]),
        ));
        s.counter(
            "luod_copy_batches_failed",
            "Offloaded batches the driver reported an error for (their units fell back to the CPU).",
            v(5),
        );
        let channels = |u: u64, cpu: u64, fb: u64| u.saturating_sub(cpu).saturating_sub(fb);
        s.families.push((
            "luod_copy_units",
            "Units the copy engine copied, by path: by a copy channel, on the CPU (batches kept there), by the CPU after a channel left them undone (fallback).",
            Values::Counter(vec![
                batch("channel", channels(v(6), v(8), v(10))),
                batch("cpu", v(8)),
                batch("fallback", v(10)),
            ]),
        ));
        s.families.push((
            "luod_copy_bytes",
            "Bytes the copy engine copied, by the same paths as luod_copy_units.",
            Values::Counter(vec![
                batch("channel", channels(v(7), v(9), v(11))),
                batch("cpu", v(9)),
                batch("fallback", v(11)),
            ]),
        ));
        s.families.push((
            "luod_copy_seconds",
            "Time the copy engine spent copying.",
            Values::Seconds(v(12) as f64 / 1e9),
        ));
    }
    s
}
