//! The agent's MQTT link (rumqttc over mutual TLS): sends the outbox in order and applies
//! the coordinator's end-to-end acks.
//!
//! One task owns rumqttc's event loop. It connects with the client certificate from
//! enrolment, a last will that sets the retained `presence` topic to `offline`, and a
//! persistent session; on every connect it publishes `online` and (when the broker kept no
//! session) subscribes to its `ack` topic, and (when it takes bundles) to its retained `desired`
//! topic, whose messages go to [`crate::desired`]. A second task sends: urgent envelopes (the
//! actual state, see [`crate::outbox`]) as soon as they are appended, ahead of the backlog and
//! outside the in-flight bound; then the oldest unacknowledged envelope first, at most
//! `max_in_flight` outstanding; when the oldest unacknowledged
//! envelope has waited `ack_timeout_secs` (even while newer ones are being acked: a broker
//! that lost its sessions drops what arrives before the coordinator re-subscribes), or after
//! a reconnect, it starts again from the oldest. A PUBACK means nothing here — only a signed
//! ack from the coordinator deletes an envelope.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outpost_shared::protocol;
use outpost_shared::protocol::messages::{self, CoordinatorMessage};
use outpost_shared::protocol::topics::{self, Channel};
use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, NetworkOptions, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::{Notify, watch};

use crate::outbox::Outbox;

/// Connection settings.
#[derive(Clone)]
pub struct LinkSettings {
    pub device_id: String,
    pub host: String,
    pub port: u16,
    pub tls: Arc<rustls::ClientConfig>,
    /// Who may sign acks: the trust root's online keys (or the enrolment key without a root).
    pub trust: Arc<crate::trust_root::Trust>,
    pub ack_timeout: Duration,
    pub max_in_flight: usize,
    /// Where desired states go (raw, unverified); None when this agent takes no bundles.
    pub desired: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    /// This run's signed presence envelopes (see `outpost_shared::protocol::presence`):
    /// published on every connect, and the last will.
    pub presence_online: Vec<u8>,
    pub presence_offline: Vec<u8>,
}

impl std::fmt::Debug for LinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSettings")
            .field("device_id", &self.device_id)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// Counters the metrics endpoint reads.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub connected: AtomicBool,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub bad_acks: AtomicU64,
    pub reconnects: AtomicU64,
    /// The coordinator's clock minus this device's, in ms, from the newest signed ack (its
    /// sealing time against the arrival time); meaningful once `skew_known`.
    pub clock_skew_ms: std::sync::atomic::AtomicI64,
    pub skew_known: AtomicBool,
    /// The coordinator's signed time, moved forward by every signed ack (expiry checks use it).
    pub trusted: Arc<crate::trusted_time::TrustedClock>,
    /// The skew last sent to the coordinator (see [`LinkStats::take_unreported_skew`]).
    pub(crate) reported_skew: std::sync::Mutex<Option<i64>>,
}

/// A skew past this is logged (once, and again when it moves by as much).
const SKEW_WARN_MS: i64 = 60_000;

impl LinkStats {
    /// Records the skew a signed ack showed; says so in the log when it is large or has moved.
    fn measured_skew(&self, skew_ms: i64) {
        let before = self.clock_skew_ms.swap(skew_ms, Ordering::Relaxed);
        let first = !self.skew_known.swap(true, Ordering::Relaxed);
        let moved = first || (skew_ms - before).abs() >= SKEW_WARN_MS;
        if skew_ms.abs() >= SKEW_WARN_MS && moved {
            tracing::warn!(skew_ms, "{}", skew_text(skew_ms));
        }
    }

    /// The measured skew when the coordinator has not heard it yet: the first one, then each
    /// time it moved by a minute or more since the last one reported.
    pub fn take_unreported_skew(&self) -> Option<i64> {
        if !self.skew_known.load(Ordering::Relaxed) {
            return None;
        }
        let now = self.clock_skew_ms.load(Ordering::Relaxed);
        let mut reported = self.reported_skew.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if reported.is_some_and(|r| (now - r).abs() < SKEW_WARN_MS) {
            return None;
        }
        *reported = Some(now);
        Some(now)
    }

    /// The last measured skew, as a sentence, when there is one.
    fn skew(&self) -> Option<String> {
        self.skew_known.load(Ordering::Relaxed).then(|| skew_text(self.clock_skew_ms.load(Ordering::Relaxed)))
    }
}

/// `device clock is 86400 s behind the coordinator` (or ahead of it).
pub fn skew_text(skew_ms: i64) -> String {
    let secs = (skew_ms.abs() + 500) / 1000;
    let side = if skew_ms >= 0 { "behind" } else { "ahead of" };
    format!("device clock is {secs} s {side} the coordinator (from its signed acks)")
}

/// Largest MQTT packet either way: an envelope at its limit plus the header.
const MAX_PACKET: usize = protocol::MAX_ENVELOPE_BYTES + 4096;

pub use outpost_shared::endpoints::{backoff, parse_mqtts_url};

/// Runs the link until `stop` turns true.
pub async fn run(
    settings: LinkSettings,
    outbox: Arc<Outbox>,
    stats: Arc<LinkStats>,
    mut stop: watch::Receiver<bool>,
) {
    let presence = topics::topic(&settings.device_id, Channel::Presence).unwrap_or_default();
    let ack_topic = topics::topic(&settings.device_id, Channel::Ack).unwrap_or_default();
    let desired_topic = topics::topic(&settings.device_id, Channel::Desired).unwrap_or_default();
    let report_topic = topics::topic(&settings.device_id, Channel::Report).unwrap_or_default();
    let mut options = MqttOptions::new(settings.device_id.clone(), settings.host.clone(), settings.port);
    options
        .set_keep_alive(Duration::from_secs(20))
        .set_clean_session(false)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_last_will(LastWill::new(
            presence.clone(),
            settings.presence_offline.clone(),
            QoS::AtLeastOnce,
            true,
        ))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(settings.tls.clone())));
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(10);
    eventloop.set_network_options(network);

    // Bumped on every (re)connect and every ack, so the sender restarts or moves on.
    let wake = Arc::new(Notify::new());
    let epoch = Arc::new(AtomicU64::new(0));
    let sender = tokio::spawn(send_loop(
        client.clone(),
        report_topic,
        Arc::clone(&outbox),
        Arc::clone(&stats),
        Arc::clone(&wake),
        Arc::clone(&epoch),
        settings.clone(),
        stop.clone(),
    ));

    let mut failures = 0u32;
    loop {
        let event = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                failures = 0;
                stats.connected.store(true, Ordering::Relaxed);
                tracing::info!(
                    host = settings.host,
                    port = settings.port,
                    session_present = ack.session_present,
                    "connected to broker"
                );
                if !ack.session_present
                    && let Err(e) = client.try_subscribe(ack_topic.clone(), QoS::AtLeastOnce)
                {
                    tracing::error!(error = %e, "cannot subscribe to acks");
                }
                // Every connect: the broker sends the retained desired state on subscribe, so a
                // state published while this agent was away is never missed.
                if settings.desired.is_some()
                    && let Err(e) = client.try_subscribe(desired_topic.clone(), QoS::AtLeastOnce)
                {
                    tracing::error!(error = %e, "cannot subscribe to the desired state");
                }
                let _ = client.try_publish(
                    presence.clone(),
                    QoS::AtLeastOnce,
                    true,
                    settings.presence_online.clone(),
                );
                epoch.fetch_add(1, Ordering::Relaxed);
                wake.notify_one();
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == desired_topic => {
                if let Some(tx) = &settings.desired
                    && tx.try_send(publish.payload.to_vec()).is_err()
                {
                    tracing::warn!("desired-state queue full; the retained state arrives again on reconnect");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == ack_topic => {
                handle_ack(&settings, &outbox, &stats, &publish.payload).await;
                wake.notify_one();
            }
            Ok(_) => {}
            Err(error) => {
                if stats.connected.swap(false, Ordering::Relaxed) {
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                let permanent = matches!(error, ConnectionError::Tls(_));
                let wait = if permanent { backoff(failures.max(5)) } else { backoff(failures) };
                failures = failures.saturating_add(1);
                if permanent {
                    let mut why = tls_failure_cause(&error.to_string());
                    if let Some(skew) = stats.skew() {
                        why.push_str(&format!("; last measured: {skew}"));
                    }
                    tracing::error!(error = %error, retry_in_ms = wait.as_millis() as u64, "broker refused the TLS connection ({why})");
                } else {
                    tracing::warn!(error = %error, retry_in_ms = wait.as_millis() as u64, "broker unreachable; telemetry waits in the outbox");
                }
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    stats.connected.store(false, Ordering::Relaxed);
    sender.abort();
    // Going away on purpose: say so (the last will is only for dying).
    if client.try_publish(presence, QoS::AtLeastOnce, true, settings.presence_offline.clone()).is_ok() {
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
}

async fn handle_ack(settings: &LinkSettings, outbox: &Arc<Outbox>, stats: &LinkStats, payload: &[u8]) {
    let arrived_ms = outpost_shared::endpoints::now_ms();
    let ack = protocol::open(payload, |id| settings.trust.control_key(id))
        .map_err(|e| e.to_string())
        .and_then(|opened| {
            messages::decode_coordinator(&opened.body)
                .map(|m| (m, opened.sent_at_ms))
                .map_err(|e| e.to_string())
        });
    let ack = match ack {
        Ok((CoordinatorMessage::Ack(ack), sealed_ms)) if ack.device == settings.device_id => {
            stats.measured_skew(sealed_ms as i64 - arrived_ms as i64);
            stats.trusted.observe(sealed_ms);
            ack
        }
        Ok(_) => {
            stats.bad_acks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("ignoring a message on the ack topic that is not an ack for this device");
            return;
        }
        Err(e) => {
            stats.bad_acks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "ignoring an ack that does not verify");
            return;
        }
    };
    let outbox = Arc::clone(outbox);
    match tokio::task::spawn_blocking(move || outbox.apply_ack(&ack)).await {
        Ok(Ok(n)) => {
            stats.acked.fetch_add(n, Ordering::Relaxed);
        }
        Ok(Err(e)) => tracing::error!(error = %e, "cannot apply an ack to the outbox"),
        Err(e) => tracing::error!(error = %e, "ack task failed"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_loop(
    client: AsyncClient,
    topic: String,
    outbox: Arc<Outbox>,
    stats: Arc<LinkStats>,
    wake: Arc<Notify>,
    epoch: Arc<AtomicU64>,
    settings: LinkSettings,
    stop: watch::Receiver<bool>,
) {
    let mut last_sent: Option<u64> = None;
    let mut seen_epoch = epoch.load(Ordering::Relaxed);
    // The oldest unacknowledged envelope and since when it has been the oldest (or resent).
    let mut oldest_seen: Option<u64> = None;
    let mut waiting_since = Instant::now();
    // Urgent envelopes sent ahead of the backlog since the last start from the oldest.
    let mut urgent_sent = std::collections::BTreeSet::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), wake.notified()).await;
        if !stats.connected.load(Ordering::Relaxed) {
            continue;
        }
        let now_epoch = epoch.load(Ordering::Relaxed);
        let oldest = match outbox.oldest() {
            Ok(oldest) => oldest,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                continue;
            }
        };
        if oldest != oldest_seen {
            oldest_seen = oldest;
            waiting_since = Instant::now();
        }
        let pending_total = outbox.stats().messages;
        if now_epoch != seen_epoch {
            // A new connection: whatever was in flight may be lost; start from the oldest.
            seen_epoch = now_epoch;
            if pending_total > 0 {
                tracing::info!(pending = pending_total, "sending the backlog, oldest first");
            }
            last_sent = None;
            urgent_sent.clear();
            waiting_since = Instant::now();
        } else if last_sent.is_some() && oldest.is_some() && waiting_since.elapsed() >= settings.ack_timeout {
            tracing::warn!(
                timeout_secs = settings.ack_timeout.as_secs(),
                oldest = oldest.unwrap_or_default(),
                pending = pending_total,
                "the oldest message got no ack in time; resending from it"
            );
            last_sent = None;
            urgent_sent.clear();
            waiting_since = Instant::now();
        }
        send_urgent(&client, &topic, &outbox, &stats, last_sent, &mut urgent_sent).await;
        // In flight = sent but still in the outbox.
        let in_flight = last_sent.map_or(0, |last| outbox.count_through(last, settings.max_in_flight));
        let room = settings.max_in_flight.saturating_sub(in_flight);
        if room == 0 {
            continue;
        }
        let batch = match outbox.pending_after(last_sent, room) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                continue;
            }
        };
        for (seq, wire) in batch {
            if urgent_sent.contains(&seq) {
                // Already on its way, ahead of the backlog.
                last_sent = Some(seq);
                continue;
            }
            if client.publish(topic.clone(), QoS::AtLeastOnce, false, wire).await.is_err() {
                break;
            }
            stats.sent.fetch_add(1, Ordering::Relaxed);
            last_sent = Some(seq);
        }
    }
}

/// Sends the urgent envelopes not sent yet (and not already passed by the in-order cursor),
/// and records them in `sent`.
async fn send_urgent(
    client: &AsyncClient,
    topic: &str,
    outbox: &Outbox,
    stats: &LinkStats,
    last_sent: Option<u64>,
    sent: &mut std::collections::BTreeSet<u64>,
) {
    let urgent = outbox.urgent();
    sent.retain(|seq| urgent.binary_search(seq).is_ok());
    let fresh: Vec<u64> = urgent
        .into_iter()
        .filter(|seq| !sent.contains(seq) && last_sent.is_none_or(|last| *seq > last))
        .collect();
    if fresh.is_empty() {
        return;
    }
    let wires = match outbox.read_seqs(fresh) {
        Ok(wires) => wires,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the outbox");
            return;
        }
    };
    for (seq, wire) in wires {
        if client.publish(topic.to_owned(), QoS::AtLeastOnce, false, wire).await.is_err() {
            return;
        }
        stats.sent.fetch_add(1, Ordering::Relaxed);
        sent.insert(seq);
    }
}

/// What a TLS failure most likely means, for the log: a clock off by more than the
/// certificates' margin reads as "not valid yet" or "expired", which no certificate change fixes.
fn tls_failure_cause(error: &str) -> String {
    let lower = error.to_lowercase();
    if lower.contains("not valid yet") || lower.contains("notvalidyet") {
        "this device's clock is behind: the broker's certificate is not valid yet at the device's time; \
         set the clock (NTP, or by hand at an air-gapped site) — certificates are valid from 48 h before \
         they were issued"
            .into()
    } else if lower.contains("expired") {
        "a certificate expired at the device's time: the clock is ahead, or the certificate must be renewed \
         (enrol again)"
            .into()
    } else {
        "check the client certificate and broker CA".into()
    }
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn a_clock_off_is_named_as_the_cause_of_a_tls_failure() {
        let behind = "TLS: invalid peer certificate: certificate not valid yet: 1800000000 < 1800082800 (82800 seconds)";
        assert!(tls_failure_cause(behind).contains("clock is behind"));
        assert!(tls_failure_cause("invalid peer certificate: Expired").contains("expired"));
        assert!(tls_failure_cause("invalid peer certificate: UnknownIssuer").contains("broker CA"));
    }

    #[test]
    fn the_skew_of_a_signed_ack_is_kept_and_said_in_words() {
        let stats = LinkStats::default();
        assert_eq!(stats.skew(), None);
        stats.measured_skew(86_400_250);
        assert_eq!(
            stats.skew().unwrap(),
            "device clock is 86400 s behind the coordinator (from its signed acks)"
        );
        stats.measured_skew(-3_000);
        assert!(stats.skew().unwrap().contains("3 s ahead of the coordinator"));
    }

    #[test]
    fn the_skew_goes_to_the_coordinator_when_first_measured_and_when_it_moves_a_minute() {
        let stats = LinkStats::default();
        assert_eq!(stats.take_unreported_skew(), None);
        stats.measured_skew(86_400_000);
        assert_eq!(stats.take_unreported_skew(), Some(86_400_000));
        assert_eq!(stats.take_unreported_skew(), None);
        stats.measured_skew(86_430_000);
        assert_eq!(stats.take_unreported_skew(), None, "half a minute is not news");
        stats.measured_skew(86_470_000);
        assert_eq!(stats.take_unreported_skew(), Some(86_470_000));
    }
}
