//! The coordinator's connection to the MQTT broker (rumqttc over mutual TLS).
//!
//! One task owns rumqttc's event loop and forwards incoming publishes to the ingest task; the
//! ingest task verifies and stores them in batches, flushes the store to disk, and only then
//! publishes the signed end-to-end acks (QoS 1) and acknowledges the broker's deliveries
//! (manual PUBACKs). The broker keeps at most its in-flight window of unacknowledged messages
//! on their way to the coordinator (rumqttd 100, Mosquitto `max_inflight_messages`), so a burst
//! waits in the broker instead of overflowing a queue here: the ingest queue holds as many
//! deliveries as MQTT's 16-bit packet ids allow, and nothing is dropped for being busy. The session is persistent
//! (`clean_session = false`), so a broker keeps the coordinator's QoS 1 messages while it is
//! away; agents retransmit whatever was never acked anyway, so nothing depends on that.
//! Reconnects back off exponentially with jitter; subscriptions are renewed whenever the
//! broker reports no session.
//!
//! Replicas (the PostgreSQL store) each connect under their own client id and subscribe in one
//! shared subscription (`$share/outpost-coordinators/outpost/v1/+/report`, MQTT 5's, which
//! Mosquitto, EMQX, VerneMQ and HiveMQ also accept from MQTT 3.1.1 clients such as this link):
//! the broker hands each device message to one replica. Ingest is idempotent on (device, seq)
//! and the end-to-end ack goes out after the commit, so a replica killed in between costs the
//! agent a resend, never a loss or a duplicate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use outpost_shared::protocol::topics::{self, Channel};
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, NetworkOptions, Packet, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::{mpsc, watch};

use crate::base::metrics::Metrics;
use crate::fleet::ingest::{Ingest, Outcome};
use outpost_shared::endpoints::backoff;

/// Where and how to connect.
#[derive(Clone)]
pub struct LinkSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    /// One of several replicas: subscribe in the [`SHARE_GROUP`] shared subscription (the broker
    /// hands each message to one replica) with a clean session (what a killed replica had in
    /// flight is dropped by the broker and sent again by its agent, never held for a replica
    /// that may not return).
    pub shared: bool,
    pub tls: Arc<rustls::ClientConfig>,
    pub max_packet_bytes: usize,
}

impl std::fmt::Debug for LinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// The shared-subscription group every replica joins (`$share/outpost-coordinators/…`).
pub const SHARE_GROUP: &str = "outpost-coordinators";

/// The filters the link subscribes to: every device's reports and presence, in the replicas'
/// shared group when `shared`.
pub fn filters(shared: bool) -> [String; 2] {
    [topics::all_devices(Channel::Report), topics::all_devices(Channel::Presence)]
        .map(|filter| if shared { format!("$share/{SHARE_GROUP}/{filter}") } else { filter })
}

/// Most messages ingested before one flush and one round of acks.
const BATCH: usize = crate::fleet::ingest::BATCH;

/// Deliveries waiting for ingest: as many as a broker can have unacknowledged on one
/// connection at all (QoS 1 packet identifiers are 16 bits, and 0 is not one), so no broker
/// finds the queue full, whatever its window says. A window alone did not do: Mosquitto 2.0.11
/// with `max_inflight_messages 1000` had more than 4,096 unacknowledged deliveries on their way
/// during a 10,000-device deploy (fleet bench, 2026-12-06). The queue takes memory only for
/// what it holds: the broker's real window times the message size.
const INGEST_QUEUE: usize = u16::MAX as usize;

/// Runs until `shutdown` turns true.
/// Every device's sealed desired state, to republish on each (re)connect.
pub type Republish = Arc<dyn Fn() -> Vec<crate::fleet::desired::Outgoing> + Send + Sync>;

pub async fn run(
    settings: LinkSettings,
    ingest: Ingest,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
    mut outgoing: mpsc::Receiver<crate::fleet::desired::Outgoing>,
    republish: Republish,
) {
    let mut options = MqttOptions::new(settings.client_id.clone(), settings.host.clone(), settings.port);
    options
        .set_keep_alive(Duration::from_secs(20))
        .set_clean_session(settings.shared)
        // Deliveries are acknowledged once ingested (see the module header): backpressure.
        .set_manual_acks(true)
        .set_max_packet_size(settings.max_packet_bytes, settings.max_packet_bytes)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(settings.tls.clone())));
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(10);
    eventloop.set_network_options(network);

    let (tx, rx) = mpsc::channel::<rumqttc::Publish>(INGEST_QUEUE);
    let ingest_task = tokio::spawn(ingest_loop(rx, ingest, client.clone(), metrics.clone()));
    // Desired states go out retained, QoS 1; rumqttc keeps them queued across reconnects.
    let publisher = {
        let client = client.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                match client.publish(message.topic.clone(), QoS::AtLeastOnce, true, message.payload).await {
                    Ok(()) => metrics.link.with_label_values(&["desired_published"]).inc(),
                    Err(e) => {
                        tracing::error!(topic = message.topic, error = %e, "cannot publish a desired state")
                    }
                }
            }
        })
    };
    let mut failures = 0u32;
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                failures = 0;
                metrics.link.with_label_values(&["connected"]).inc();
                tracing::info!(
                    host = settings.host,
                    port = settings.port,
                    session_present = ack.session_present,
                    "connected to broker"
                );
                // A broker may have lost its retained messages (the embedded one keeps them in
                // memory): every desired state goes out again; agents skip revisions they applied.
                let (to_broker, republish) = (client.clone(), Arc::clone(&republish));
                tokio::spawn(async move {
                    let states = tokio::task::spawn_blocking(move || republish()).await.unwrap_or_default();
                    for message in states {
                        if let Err(e) =
                            to_broker.publish(message.topic, QoS::AtLeastOnce, true, message.payload).await
                        {
                            tracing::warn!(error = %e, "cannot republish a desired state");
                            break;
                        }
                    }
                });
                if ack.session_present {
                    metrics.broker_subscribed.set(1);
                } else {
                    for filter in filters(settings.shared) {
                        if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                            tracing::error!(filter, error = %e, "cannot subscribe");
                        }
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                // Two filters, two SUBACKs; either means reports can arrive now.
                metrics.broker_subscribed.set(1);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                // Never wait here: the ingest task may itself be waiting for this loop to send
                // its acks (rumqttc's request queue drains only while the loop is polled), and
                // waiting both ways deadlocked the link under load (10,000 devices, fleet bench).
                // The queue holds every delivery a broker can have unacknowledged (see
                // INGEST_QUEUE), so this cannot fill; were it to, the overflow is acknowledged
                // and dropped (its agents send it again after their ack timeout, and the
                // coordinator stores it once) — counted, so it shows.
                match tx.try_send(publish) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(publish)) => {
                        metrics.link.with_label_values(&["dropped_ingest_busy"]).inc();
                        let _ = client.try_ack(&publish);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
            Ok(_) => {}
            Err(error) => {
                metrics.broker_subscribed.set(0);
                metrics.link.with_label_values(&["disconnected"]).inc();
                let wait = match &error {
                    ConnectionError::Tls(_) => backoff(failures.max(5)),
                    _ => backoff(failures),
                };
                failures = failures.saturating_add(1);
                tracing::warn!(error = %error, retry_in_ms = wait.as_millis() as u64, "broker connection lost");
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    drop(tx);
    publisher.abort();
    let _ = ingest_task.await;
    // Let a DISCONNECT go out so the broker keeps the session cleanly.
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

async fn ingest_loop(
    mut rx: mpsc::Receiver<rumqttc::Publish>,
    ingest: Ingest,
    client: AsyncClient,
    metrics: Metrics,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let work = Arc::new(std::mem::take(&mut batch));
        let (ingest_ref, work_ref) = (ingest.clone(), Arc::clone(&work));
        let result = tokio::task::spawn_blocking(move || ingest_batch(&ingest_ref, &work_ref)).await;
        // The broker's deliveries are done with either way: stored and flushed, or refused
        // without an end-to-end ack (then the agents send them again). Acknowledging them opens
        // the broker's window for the next ones.
        for publish in work.iter() {
            if let Err(e) = client.ack(publish).await {
                tracing::warn!(error = %e, "cannot acknowledge a delivery to the broker");
            }
        }
        let acks = match result {
            Ok(Ok(acks)) => acks,
            Ok(Err(e)) => {
                // No end-to-end ack, so the agents will send it all again.
                tracing::error!(error = %e, "cannot store telemetry; not acknowledging this batch");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "ingest task failed");
                continue;
            }
        };
        for (topic, wire) in acks {
            match client.publish(topic, QoS::AtLeastOnce, false, wire).await {
                Ok(()) => metrics.link.with_label_values(&["ack_published"]).inc(),
                Err(e) => tracing::warn!(error = %e, "cannot queue ack"),
            }
        }
    }
}

/// Ingests a batch, flushes, and returns the acks to publish (topic, wire).
fn ingest_batch(
    ingest: &Ingest,
    batch: &[rumqttc::Publish],
) -> Result<Vec<(String, Vec<u8>)>, crate::base::store::StoreError> {
    let mut reports: Vec<(&str, &[u8])> = Vec::with_capacity(batch.len());
    for publish in batch {
        match topics::parse(&publish.topic) {
            Some((device, Channel::Report)) => reports.push((device, &publish.payload)),
            Some((device, Channel::Presence)) => ingest.presence(device, &publish.payload)?,
            _ => tracing::debug!(topic = publish.topic, "ignoring message on an unexpected topic"),
        }
    }
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for ((device, _), outcome) in reports.iter().zip(ingest.ingest_many(&reports)?) {
        if let Outcome::Stored { seq } | Outcome::Duplicate { seq } = outcome {
            seqs.entry((*device).to_owned()).or_default().push(seq);
        }
    }
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    ingest.devices().flush()?;
    let mut acks = Vec::new();
    for (device, wires) in ingest.seal_acks_many(seqs.into_iter().collect())? {
        let Ok(topic) = topics::topic(&device, Channel::Ack) else { continue };
        acks.extend(wires.into_iter().map(|wire| (topic.clone(), wire)));
    }
    Ok(acks)
}
