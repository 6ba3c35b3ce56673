//! `outpost-agent simulate`: many lightweight simulated agents in one process, for load tests
//! of a coordinator and its broker. Each simulated device is a real fleet member as far as the
//! coordinator can tell: its own Ed25519 identity and TLS key, enrolled with a one-time token
//! (created with an admin token), its own MQTT connection with its client certificate, signed
//! window reports with strictly increasing sequence numbers every `interval`, and a reconcile
//! loop that verifies each retained desired state (the coordinator's signature, this device,
//! a newer revision) and reports the versions as its actual state — resent each interval until
//! the coordinator's signed ack covers it, as an agent's outbox does (window reports are not
//! resent). No model runs (no tract, no downloads): what is measured is the control plane.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_shared::histogram::LogHistogram;
use outpost_shared::protocol::keys::{PublicKey, SigningKey, device_id_of};
use outpost_shared::protocol::messages::{
    self, ActualState, AgentMessage, CoordinatorMessage, LogWindow, ModelState, ModelWindow, OutboxStats,
    Report, SystemStats,
};
use outpost_shared::protocol::topics::{self, Channel};
use outpost_shared::protocol::vocab::{LoadState, Slot};
use outpost_shared::protocol::{self};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::watch;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The coordinator's API, e.g. `http://127.0.0.1:7400`.
    pub api_url: String,
    /// An admin token (to create one enrolment token per device).
    pub admin_token: String,
    pub ca_pem: Option<Vec<u8>>,
    pub devices: usize,
    pub labels: BTreeMap<String, String>,
    /// Enrolments in flight at once.
    pub parallel: usize,
}

/// One enrolled simulated device.
pub struct SimDevice {
    pub id: String,
    signing: SigningKey,
    tls: Arc<rustls::ClientConfig>,
    coordinator: PublicKey,
    host: String,
    port: u16,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Counters of the whole simulated fleet.
#[derive(Debug, Default)]
pub struct Stats {
    pub connected: AtomicUsize,
    pub reports: AtomicU64,
    pub desired: AtomicU64,
    pub refused: AtomicU64,
    /// Actual states sent at once when a desired state was applied, and those that could not
    /// be (the client's request queue was full: they go with the next report instead).
    pub states_sent: AtomicU64,
    pub states_deferred: AtomicU64,
    /// Device index → model versions of its newest applied desired state (`name@version`).
    running: Mutex<HashMap<usize, Vec<String>>>,
    /// QoS 1 round trips to the broker (PUBLISH sent → PUBACK received), milliseconds.
    puback_ms: Mutex<Option<LogHistogram>>,
}

impl Stats {
    /// How many devices run `name@version` per their newest desired state.
    pub fn running(&self, target: &str) -> usize {
        let running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        running.values().filter(|v| v.iter().any(|m| m == target)).count()
    }

    /// The `q` quantile of the broker's QoS 1 round trip (ms) and how many were timed.
    pub fn puback_quantile(&self, q: f64) -> (Option<f64>, u64) {
        let timed = self.puback_ms.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        timed.as_ref().map_or((None, 0), |h| (h.quantile(q), h.count()))
    }

    fn time_puback(&self, ms: f64) {
        let mut timed = self.puback_ms.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        timed.get_or_insert_with(|| LogHistogram::new(0.01)).record(ms);
    }
}

/// Why a simulated device could not enrol.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Client(#[from] outpost_client::ClientError),
    #[error("{what}: {source}")]
    Call { what: &'static str, source: outpost_client::ClientError },
    #[error("enrolment answer has no `{0}`")]
    Missing(&'static str),
    #[error(transparent)]
    Url(#[from] outpost_shared::endpoints::UrlError),
    #[error(transparent)]
    Tls(#[from] outpost_shared::tls::TlsError),
    #[error("keys: {0}")]
    Keys(String),
}

/// Enrols `plan.devices` devices (blocking; `parallel` at a time), calling `progress` with the
/// count done so far.
pub fn enrol_all(plan: &Plan, progress: &(dyn Fn(usize) + Sync)) -> Result<Vec<SimDevice>, SimError> {
    let http = outpost_client::Client::new(
        &plan.api_url,
        &plan.admin_token,
        plan.ca_pem.as_deref(),
        Duration::from_secs(60),
    )?;
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Result<SimDevice, SimError>>> = Mutex::new(Vec::with_capacity(plan.devices));
    std::thread::scope(|scope| {
        for _ in 0..plan.parallel.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= plan.devices {
                        return;
                    }
                    let result = enrol_one(plan, &http, i);
                    let failed = result.is_err();
                    results.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(result);
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if failed {
                        return;
                    }
                    if n.is_multiple_of(500) || n == plan.devices {
                        progress(n);
                    }
                }
            });
        }
    });
    results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).into_iter().collect()
}

fn enrol_one(plan: &Plan, http: &outpost_client::Client, index: usize) -> Result<SimDevice, SimError> {
    let mut labels = plan.labels.clone();
    labels.insert("sim".into(), format!("{}", index % 100));
    let call = |what: &'static str| move |source| SimError::Call { what, source };
    let token: serde_json::Value = http
        .post_json("/api/v1/enrolment-tokens", &serde_json::json!({ "labels": labels }))
        .map_err(call("enrolment token"))?;
    let (signing, _) = SigningKey::generate().map_err(|e| SimError::Keys(e.to_string()))?;
    let id = device_id_of(signing.public_key().as_bytes());
    let tls_key = rcgen::KeyPair::generate().map_err(|e| SimError::Keys(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, id.clone());
    let csr = params
        .serialize_request(&tls_key)
        .and_then(|c| c.pem())
        .map_err(|e| SimError::Keys(e.to_string()))?;
    let enrolled: serde_json::Value = http
        .post_json(
            "/api/v1/enrol",
            &serde_json::json!({
                "token": token["token"],
                "device_id": id,
                "public_key": hex::encode(signing.public_key().as_bytes()),
                "csr": csr,
            }),
        )
        .map_err(call("enrol"))?;
    let text = |k: &'static str| enrolled[k].as_str().map(str::to_owned).ok_or(SimError::Missing(k));
    let (host, port) = outpost_shared::endpoints::parse_mqtts_url(&text("broker_url")?)?;
    let tls = outpost_shared::tls::client_config(
        text("broker_ca")?.as_bytes(),
        text("client_certificate")?.as_bytes(),
        tls_key.serialize_pem().as_bytes(),
    )?;
    let key = hex::decode(text("coordinator_public_key")?).map_err(|e| SimError::Keys(e.to_string()))?;
    let coordinator = PublicKey::from_bytes(&key).map_err(|e| SimError::Keys(e.to_string()))?;
    Ok(SimDevice { id, signing, tls, coordinator, host, port })
}

/// Runs every device until `stop` turns true: they connect `ramp_per_sec` a second (a fleet
/// coming up, not a thundering herd), and report spread evenly over `interval`.
pub async fn run(
    devices: Vec<SimDevice>,
    interval: Duration,
    ramp_per_sec: u32,
    stats: Arc<Stats>,
    stop: watch::Receiver<bool>,
) {
    let n = devices.len().max(1);
    let tasks: Vec<_> = devices
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let offset = interval.mul_f64(i as f64 / n as f64);
            let start = Duration::from_secs_f64(i as f64 / f64::from(ramp_per_sec.max(1)));
            let (stats, stop) = (Arc::clone(&stats), stop.clone());
            tokio::spawn(async move {
                tokio::time::sleep(start).await;
                device_loop(i, d, interval, offset, stats, stop).await;
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

fn report(model: Option<&(String, String)>, start: u64, end: u64, latency: &LogHistogram) -> Report {
    Report {
        window_start_ms: start,
        window_end_ms: end,
        models: model
            .map(|(name, version)| ModelWindow {
                model: name.clone(),
                version: version.clone(),
                slot: Slot::Primary,
                requests: 100,
                errors: 0,
                rows: 100,
                latency_us: latency.clone(),
                top_score: LogHistogram::default(),
                label_counts: BTreeMap::new(),
            })
            .into_iter()
            .collect(),
        system: SystemStats::default(),
        prediction_log: LogWindow::default(),
        outbox: OutboxStats::default(),
    }
}

async fn device_loop(
    index: usize,
    d: SimDevice,
    interval: Duration,
    offset: Duration,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    let topic = |c| topics::topic(&d.id, c).unwrap_or_default();
    let (report_topic, desired_topic, presence, ack_topic) =
        (topic(Channel::Report), topic(Channel::Desired), topic(Channel::Presence), topic(Channel::Ack));
    let mut options = MqttOptions::new(d.id.clone(), d.host.clone(), d.port);
    options
        .set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_max_packet_size(protocol::MAX_ENVELOPE_BYTES + 4096, protocol::MAX_ENVELOPE_BYTES + 4096)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::clone(&d.tls))));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(30);
    eventloop.set_network_options(network);
    let mut latency = LogHistogram::default();
    latency.record_n(250.0, 100);
    let (mut seq, mut revision, mut was_connected) = (1u64, 0u64, false);
    // One session per simulated run: its presence is signed like a real agent's.
    let session = outpost_shared::endpoints::now_ms();
    let mut model: Option<(String, String)> = None;
    // The newest actual state until the coordinator acks it: resent every tick, like an agent's
    // outbox (the coordinator may drop what arrives while it is busy, and stores it once).
    let mut pending_state: Option<(u64, Vec<u8>)> = None;
    // QoS 1 publishes awaiting their PUBACK, by packet id, to time the broker's round trip.
    let mut in_flight: HashMap<u16, std::time::Instant> = HashMap::new();
    let mut window_start = outpost_shared::endpoints::now_ms();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let seal = |seq: u64, message: &AgentMessage| {
        protocol::seal(&d.signing, seq, outpost_shared::endpoints::now_ms(), &messages::encode(message))
    };
    loop {
        tokio::select! {
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { break },
            _ = ticker.tick() => {
                if let Some((_, wire)) = &pending_state {
                    let _ = client.try_publish(report_topic.clone(), QoS::AtLeastOnce, false, wire.clone());
                }
                let now = outpost_shared::endpoints::now_ms();
                let body = AgentMessage::Report(report(model.as_ref(), window_start, now, &latency));
                window_start = now;
                if let Ok(wire) = seal(seq, &body)
                    && client.try_publish(report_topic.clone(), QoS::AtLeastOnce, false, wire).is_ok()
                {
                    seq += 1;
                    stats.reports.fetch_add(1, Ordering::Relaxed);
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if !was_connected {
                        was_connected = true;
                        stats.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = client.try_subscribe(desired_topic.clone(), QoS::AtLeastOnce);
                    let _ = client.try_subscribe(ack_topic.clone(), QoS::AtLeastOnce);
                    let online = protocol::presence::seal(
                        &d.signing,
                        session,
                        protocol::presence::Presence::Online,
                        outpost_shared::endpoints::now_ms(),
                    );
                    if let Ok(online) = online {
                        let _ = client.try_publish(presence.clone(), QoS::AtLeastOnce, true, online);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == ack_topic => {
                    let opened = protocol::open(&p.payload, |_| Some(d.coordinator));
                    if let Some(CoordinatorMessage::Ack(ack)) = opened.ok().and_then(|o| messages::decode_coordinator(&o.body).ok())
                        && pending_state.as_ref().is_some_and(|(seq, _)| ack.covers(*seq))
                    {
                        pending_state = None;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == desired_topic => {
                    stats.desired.fetch_add(1, Ordering::Relaxed);
                    let opened = protocol::open(&p.payload, |_| Some(d.coordinator));
                    let desired = opened.ok().and_then(|o| messages::decode_coordinator(&o.body).ok());
                    let Some(CoordinatorMessage::Desired(state)) = desired else {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if state.device != d.id || state.revision <= revision {
                        continue;
                    }
                    revision = state.revision;
                    model = state.models.first().map(|m| (m.name.clone(), m.version.clone()));
                    let versions: Vec<String> = state.models.iter().map(|m| format!("{}@{}", m.name, m.version)).collect();
                    stats.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(index, versions);
                    let actual = AgentMessage::State(ActualState {
                        agent_version: format!("{}-sim", env!("CARGO_PKG_VERSION")),
                        models: state
                            .models
                            .iter()
                            .map(|m| ModelState {
                                name: m.name.clone(),
                                version: m.version.clone(),
                                slot: Slot::Primary,
                                state: LoadState::Ready,
                                reason: None,
                            })
                            .collect(),
                    });
                    if let Ok(wire) = seal(seq, &actual) {
                        let sent = client.try_publish(report_topic.clone(), QoS::AtLeastOnce, false, wire.clone());
                        let counter = if sent.is_ok() { &stats.states_sent } else { &stats.states_deferred };
                        counter.fetch_add(1, Ordering::Relaxed);
                        pending_state = Some((seq, wire));
                        seq += 1;
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                    in_flight.insert(pkid, std::time::Instant::now());
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(sent) = in_flight.remove(&ack.pkid) {
                        stats.time_puback(sent.elapsed().as_secs_f64() * 1e3);
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    in_flight.clear();
                    tokio::time::sleep(Duration::from_secs(1)).await
                }
            }
        }
    }
}
