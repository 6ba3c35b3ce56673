//! One client's session with rumqttd's router, inside the coordinator process.
//!
//! The front used to pass each client's admitted bytes to rumqttd over a loopback TCP
//! connection: three file descriptors per device, so a 20,000-descriptor limit held 6,496
//! devices. Now each client gets a local link ([`rumqttd::Broker::link`]) and costs one
//! descriptor, its own TLS connection. Packets the gate admitted are decoded with rumqttd's
//! MQTT 3.1.1 codec and pushed into the link; the router's notifications are encoded back for
//! the client. What rumqttd's network layer did for a remote client, this does:
//!
//! - the **CONNACK** (a local link always starts a clean session — `Broker::link` offers no
//!   other — so it says `session_present = 0` and clients subscribe again, as the agent and the
//!   coordinator do);
//! - **keep-alive**: a client silent for 1.5 × its keep-alive interval is dropped, and a
//!   keep-alive of 0 is refused (rumqttd's rule: a dead connection would hold its slot for good);
//! - the **last will**: a local link carries none, so when a client goes without a DISCONNECT
//!   its will is published here (retained as it asked, QoS 0) before the link is closed.
//!
//! A device's packets are checked again after rumqttd's decoding (own topics only), so the two
//! codecs can never disagree about what passes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use outpost_shared::protocol::gate::{self, COORDINATOR};
use rumqttd::Notification;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill, Packet, Protocol, Publish,
};

/// Why a session could not open or had to end.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("MQTT packet rumqttd cannot decode: {0}")]
    Decode(String),
    #[error("the first packet is not a CONNECT")]
    NotConnect,
    #[error("keep-alive 0 is refused: a dead connection could never be told from an idle one")]
    ZeroKeepAlive,
    #[error("the broker refused the session: {0}")]
    Link(String),
    #[error("the broker's router has stopped")]
    RouterGone,
    #[error("{identity} may not {what} `{topic}` (checked again after decoding)")]
    Outside { identity: String, what: &'static str, topic: String },
}

/// What [`Session::receive`] found besides packets.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// `false`: the router ended the session (the same client id connected again).
    pub open: bool,
    /// The router paused this client until [`Session::ready`].
    pub paused: bool,
}

/// One open session: the link both ways and what ending it needs.
pub struct Session {
    identity: String,
    tx: LinkTx,
    rx: LinkRx,
    codec: V4,
    max_packet: usize,
    will: Option<LastWill>,
    keep_alive: Duration,
    /// Packet ids of QoS 1 deliveries to the client not yet acknowledged.
    delivered: HashSet<u16>,
    /// The coordinator's wider delivery window (see [`COORDINATOR_WINDOW`]): its deliveries
    /// not yet acknowledged, and the router's packet ids still owed an ack.
    window: Option<Window>,
}

/// Deliveries the coordinator may have unacknowledged on the embedded broker. rumqttd holds any
/// client to 100, and the coordinator acknowledges a delivery only once it is stored: with a
/// batch flush per round, 100 a round capped ingest at 248 reports/s of the 1,000/s 10,000
/// devices send. The front acknowledges the router for the coordinator as long as fewer than
/// this many wait, and holds the router's acks back beyond (so the router stops too). Below
/// the coordinator's ingest queue (65,535), so that never overflows.
pub const COORDINATOR_WINDOW: usize = 4096;

#[derive(Debug, Default)]
struct Window {
    unacked: usize,
    owed: std::collections::VecDeque<u16>,
}

impl Session {
    /// Opens a session for `connect` (the CONNECT the gate admitted, one whole packet) on
    /// `broker`; returns it and the CONNACK to send the client.
    pub async fn open(
        broker: &Arc<rumqttd::Broker>,
        identity: &str,
        connect: &Bytes,
        max_packet: usize,
    ) -> Result<(Session, Bytes), SessionError> {
        let mut codec = V4;
        let packet = codec
            .read_mut(&mut BytesMut::from(&connect[..]), max_packet)
            .map_err(|e| SessionError::Decode(format!("{e:?}")))?;
        let Packet::Connect(connect, _, will, _, _) = packet else {
            return Err(SessionError::NotConnect);
        };
        if connect.keep_alive == 0 {
            return Err(SessionError::ZeroKeepAlive);
        }
        // Registering waits on the router thread's answer: off the async workers.
        let (broker, client_id) = (Arc::clone(broker), connect.client_id.clone());
        let (tx, rx) =
            tokio::task::spawn_blocking(move || broker.link(&client_id).map_err(|e| e.to_string()))
                .await
                .map_err(|_| SessionError::RouterGone)?
                .map_err(SessionError::Link)?;
        let mut connack = BytesMut::new();
        let ack = ConnAck { session_present: false, code: ConnectReturnCode::Success };
        codec
            .write(Packet::ConnAck(ack, None), &mut connack)
            .map_err(|e| SessionError::Decode(format!("{e:?}")))?;
        let session = Session {
            identity: identity.to_owned(),
            tx,
            rx,
            codec,
            max_packet,
            will,
            keep_alive: Duration::from_millis(u64::from(connect.keep_alive) * 1500),
            delivered: HashSet::new(),
            window: (identity == COORDINATOR).then(Window::default),
        };
        Ok((session, connack.freeze()))
    }

    /// How long the client may stay silent (1.5 × its keep-alive).
    pub fn keep_alive(&self) -> Duration {
        self.keep_alive
    }

    /// Passes admitted packets to the router; `true` when the client said DISCONNECT (its
    /// will is then dropped, and the session is over). What the client is owed at once goes
    /// into `replies`:
    ///
    /// - a QoS 1 PUBLISH is acknowledged here as soon as it is in the router's buffer (what
    ///   rumqttd's own PUBACK means too), and the router's later PUBACK is dropped. rumqttd
    ///   sends acks only when it schedules the connection, and it does not schedule one whose
    ///   deliveries wait for the client's acks; a client that stops reading acks while its own
    ///   publishes wait for theirs (rumqttc does, when its in-flight window is full) then stalls
    ///   for good — the coordinator did, at 10,000 devices, until its keep-alive gave up;
    /// - a PINGREQ is answered here, for the same reason;
    /// - a PUBACK for a delivery this session never made (one from before a reconnect: sessions
    ///   start clean) is dropped, since rumqttd ends a connection that sends one.
    ///
    /// rumqttd's link hands packets over on a bounded channel with a blocking send: when the
    /// router is 1,000 events behind, this worker waits for it. The router thread never waits
    /// on anything async, so that wait is short and cannot deadlock.
    pub async fn forward(&mut self, frames: &[Bytes], replies: &mut BytesMut) -> Result<bool, SessionError> {
        let mut disconnect = false;
        let mut last = None;
        for frame in frames {
            let packet = self
                .codec
                .read_mut(&mut BytesMut::from(&frame[..]), self.max_packet)
                .map_err(|e| SessionError::Decode(format!("{e:?}")))?;
            self.check(&packet)?;
            match &packet {
                Packet::Disconnect(..) => {
                    self.will = None;
                    disconnect = true;
                }
                Packet::PingReq(_) => {
                    replies.extend_from_slice(&[0xd0, 0x00]);
                    continue;
                }
                Packet::Publish(..) => {
                    if let Some((1, pkid)) = publish_qos_and_id(frame) {
                        replies.extend_from_slice(&[0x40, 0x02]);
                        replies.extend_from_slice(&pkid.to_be_bytes());
                    }
                }
                Packet::PubAck(..) if self.window.is_some() => {
                    // Any ack of the coordinator's frees one place in its window; the router
                    // gets the oldest ack held back from it, if any (the rest it had at once).
                    let owed = self.window.as_mut().and_then(|window| {
                        window.unacked = window.unacked.saturating_sub(1);
                        window.owed.pop_front()
                    });
                    if let Some(pkid) = owed
                        && let Some(previous) = last.replace(router_puback(pkid)?)
                    {
                        self.tx.buffer().push_back(previous);
                    }
                    continue;
                }
                Packet::PubAck(..) => {
                    let pkid = frame.get(2..4).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
                    if !self.delivered.remove(&pkid) {
                        tracing::debug!(
                            identity = self.identity,
                            pkid,
                            "embedded broker: PUBACK for no delivery of this session dropped"
                        );
                        continue;
                    }
                }
                _ => {}
            }
            if let Some(previous) = last.replace(packet) {
                self.tx.buffer().push_back(previous);
            }
            if disconnect {
                break;
            }
        }
        if let Some(packet) = last {
            // One wake-up of the router for the whole batch.
            self.tx.send(packet).await.map_err(|e| SessionError::Link(e.to_string()))?;
        }
        Ok(disconnect)
    }

    /// A device's packets after rumqttd's decoding: own topics only, as the gate decided on
    /// rumqttc's decoding of the same bytes.
    fn check(&self, packet: &Packet) -> Result<(), SessionError> {
        if self.identity == COORDINATOR {
            return Ok(());
        }
        let outside = |what, topic: &str| SessionError::Outside {
            identity: self.identity.clone(),
            what,
            topic: outpost_shared::names::shown(topic),
        };
        match packet {
            Packet::Publish(publish, _) => {
                let topic = String::from_utf8_lossy(&publish.topic);
                if !gate::may_publish(&self.identity, &topic, publish.retain) {
                    return Err(outside("publish on", &topic));
                }
            }
            Packet::Subscribe(subscribe, _) => {
                if let Some(filter) =
                    subscribe.filters.iter().find(|f| !gate::may_subscribe(&self.identity, &f.path))
                {
                    return Err(outside("subscribe to", &filter.path));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Waits for what the router has for the client and encodes all of it into `out`.
    /// Cancel-safe: the only await is the wait for the router's signal.
    pub async fn receive(&mut self, out: &mut BytesMut) -> Result<Received, SessionError> {
        let first = self.rx.next().await.map_err(|_| SessionError::RouterGone)?;
        let mut received = Received { open: true, paused: false };
        let mut acks = Vec::new();
        self.encode(first, out, &mut received, &mut acks)?;
        // Whatever else is already waiting goes out in the same write.
        while received.open {
            match self.rx.next().now_or_never() {
                Some(Ok(Some(notification))) => {
                    self.encode(Some(notification), out, &mut received, &mut acks)?
                }
                Some(Ok(None)) | None => break,
                Some(Err(_)) => return Err(SessionError::RouterGone),
            }
        }
        // The coordinator's window: acks for the router, in one hand-over. (`send` never
        // suspends, so this stays cancel-safe.)
        if let Some(last) = acks.pop() {
            self.tx.buffer().extend(acks);
            self.tx.send(last).await.map_err(|e| SessionError::Link(e.to_string()))?;
        }
        Ok(received)
    }

    fn encode(
        &mut self,
        notification: Option<Notification>,
        out: &mut BytesMut,
        received: &mut Received,
        acks: &mut Vec<Packet>,
    ) -> Result<(), SessionError> {
        let Some(notification) = notification else { return Ok(()) };
        if matches!(notification, Notification::Disconnect(..)) {
            received.open = false;
        }
        match Option::<Packet>::from(notification) {
            // Answered when the client's packet came in (see `forward`).
            Some(Packet::PubAck(..) | Packet::PingResp(_)) => {}
            Some(packet) => {
                let start = out.len();
                let publish = matches!(packet, Packet::Publish(..));
                self.codec.write(packet, out).map_err(|e| SessionError::Decode(format!("{e:?}")))?;
                if publish && let Some((1.., pkid)) = publish_qos_and_id(&out[start..]) {
                    match &mut self.window {
                        Some(window) => {
                            window.unacked += 1;
                            if window.unacked <= COORDINATOR_WINDOW {
                                acks.push(router_puback(pkid)?);
                            } else {
                                window.owed.push_back(pkid);
                            }
                        }
                        None => {
                            self.delivered.insert(pkid);
                        }
                    }
                }
            }
            // The router paused this client (its queue was full) until told it is ready.
            None => received.paused = true,
        }
        Ok(())
    }

    /// Tells the router the client took what it had (after [`Received::paused`], once written).
    pub async fn ready(&self) -> Result<(), SessionError> {
        self.rx.wake().await.map_err(|_| SessionError::RouterGone)
    }

    /// Ends the session: publishes the will unless the client said DISCONNECT or `superseded`
    /// (a newer connection of the same client took over), then tells the router.
    pub async fn close(mut self, superseded: bool) {
        if let Some(will) = self.will.take().filter(|_| !superseded) {
            let publish = Publish::new(will.topic, will.message, will.retain);
            self.tx.buffer().push_back(Packet::Publish(publish, None));
        }
        let disconnect = Disconnect { reason_code: DisconnectReasonCode::NormalDisconnection };
        // A router that already dropped this link (a newer one took its client id) finds only
        // this orphaned buffer, so nothing reaches the newer session.
        let _ = self.tx.send(Packet::Disconnect(disconnect, None)).await;
    }
}

/// A PUBACK for the router (from the front, on the coordinator's behalf).
fn router_puback(pkid: u16) -> Result<Packet, SessionError> {
    let [high, low] = pkid.to_be_bytes();
    V4.read_mut(&mut BytesMut::from(&[0x40, 0x02, high, low][..]), 4)
        .map_err(|e| SessionError::Decode(format!("{e:?}")))
}

/// QoS and packet id of one whole, already decoded MQTT 3.1.1 PUBLISH frame (id 0 at QoS 0):
/// fixed header, remaining length (1–4 bytes), topic (length-prefixed), then the id.
fn publish_qos_and_id(frame: &[u8]) -> Option<(u8, u16)> {
    let qos = (frame.first()? >> 1) & 0b11;
    let length_bytes = frame.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let topic_at = 1 + length_bytes;
    let topic_len = usize::from(u16::from_be_bytes([*frame.get(topic_at)?, *frame.get(topic_at + 1)?]));
    if qos == 0 {
        return Some((0, 0));
    }
    let id_at = topic_at + 2 + topic_len;
    Some((qos, u16::from_be_bytes([*frame.get(id_at)?, *frame.get(id_at + 1)?])))
}

#[cfg(test)]
mod tests {
    use rumqttc::mqttbytes::QoS;
    use rumqttc::mqttbytes::v4 as wire;

    use super::*;

    const A: &str = "dev-aaaaaaaaaaaaaaaa";
    const B: &str = "dev-bbbbbbbbbbbbbbbb";
    const MAX: usize = 1 << 20;

    fn broker() -> Arc<rumqttd::Broker> {
        let config = serde_json::json!({
            "id": 0,
            "router": { "max_connections": 10, "max_outgoing_packet_count": 200,
                        "max_segment_size": 1_048_576, "max_segment_count": 2 },
        });
        Arc::new(rumqttd::Broker::new(serde_json::from_value(config).unwrap()))
    }

    /// What a client sends, framed as the gate passes it on (rumqttc's codec, as agents use).
    fn frame(packet: wire::Packet) -> Bytes {
        let mut out = BytesMut::new();
        packet.write(&mut out, MAX).unwrap();
        out.freeze()
    }

    fn connect(id: &str, keep_alive: u16, will: bool) -> Bytes {
        let mut c = wire::Connect::new(id);
        c.keep_alive = keep_alive;
        if will {
            c.last_will = Some(wire::LastWill::new(
                format!("outpost/v1/{id}/presence"),
                b"offline".to_vec(),
                QoS::AtLeastOnce,
                true,
            ));
        }
        frame(wire::Packet::Connect(c))
    }

    async fn open(broker: &Arc<rumqttd::Broker>, id: &str, will: bool) -> Session {
        let (session, connack) = Session::open(broker, id, &connect(id, 30, will), MAX).await.unwrap();
        assert_eq!(&connack[..], &[0x20, 0x02, 0x00, 0x00], "CONNACK: accepted, no session present");
        session
    }

    /// The coordinator's session subscribed to `filter` (packet id 7), and what it got then.
    async fn coordinator_on(broker: &Arc<rumqttd::Broker>, filter: &str) -> (Session, Vec<Packet>) {
        let mut coordinator = open(broker, COORDINATOR, false).await;
        let mut subscribe = wire::Subscribe::new(filter, QoS::AtLeastOnce);
        subscribe.pkid = 7;
        coordinator
            .forward(&[frame(wire::Packet::Subscribe(subscribe))], &mut BytesMut::new())
            .await
            .unwrap();
        let got = received(&mut coordinator).await;
        assert!(
            got.iter().any(|p| matches!(p, Packet::SubAck(ack, _) if ack.pkid == 7)),
            "no SUBACK: {got:?}"
        );
        (coordinator, got)
    }

    /// The coordinator's side: subscribed to every device's presence.
    async fn watcher(broker: &Arc<rumqttd::Broker>) -> Session {
        coordinator_on(broker, "outpost/v1/+/presence").await.0
    }

    /// Every packet the router sends `session` within half a second.
    async fn received(session: &mut Session) -> Vec<Packet> {
        let mut out = BytesMut::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(received) = tokio::time::timeout_at(deadline, session.receive(&mut out)).await {
            assert!(received.unwrap().open);
        }
        let mut packets = Vec::new();
        while !out.is_empty() {
            packets.push(V4.read_mut(&mut out, MAX).unwrap());
        }
        packets
    }

    fn publishes(packets: Vec<Packet>) -> Vec<Publish> {
        packets
            .into_iter()
            .filter_map(|p| if let Packet::Publish(p, _) = p { Some(p) } else { None })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_gone_without_disconnect_leaves_its_will_retained() {
        let broker = broker();
        let mut watcher = watcher(&broker).await;
        open(&broker, A, true).await.close(false).await;
        let wills = publishes(received(&mut watcher).await);
        let [will] = &wills[..] else { panic!("{} wills published", wills.len()) };
        assert_eq!(
            (&will.topic[..], &will.payload[..]),
            (format!("outpost/v1/{A}/presence").as_bytes(), &b"offline"[..])
        );
        // Retained: a subscriber that comes later still learns it.
        watcher.close(true).await;
        let (_later, got) = coordinator_on(&broker, &format!("outpost/v1/{A}/presence")).await;
        assert_eq!(publishes(got).len(), 1, "the retained will did not reach a later subscriber");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_disconnect_or_a_takeover_publishes_no_will() {
        let broker = broker();
        let mut watcher = watcher(&broker).await;
        let mut said_goodbye = open(&broker, A, true).await;
        assert!(
            said_goodbye.forward(&[frame(wire::Packet::Disconnect)], &mut BytesMut::new()).await.unwrap()
        );
        said_goodbye.close(false).await;
        open(&broker, B, true).await.close(true).await;
        assert!(publishes(received(&mut watcher).await).is_empty(), "a will went out");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_pass_with_their_acknowledgements_both_ways() {
        let broker = broker();
        let (mut coordinator, _) = coordinator_on(&broker, "outpost/v1/+/report").await;
        let mut device = open(&broker, A, true).await;
        for pkid in [3, 4] {
            let mut report =
                wire::Publish::new(format!("outpost/v1/{A}/report"), QoS::AtLeastOnce, b"sealed".to_vec());
            report.pkid = pkid;
            let mut replies = BytesMut::new();
            // A ping and a PUBACK for no delivery of this session ride along: the ping is
            // answered here, the stray PUBACK dropped (rumqttd would end the connection).
            let frames = [
                frame(wire::Packet::Publish(report)),
                frame(wire::Packet::PingReq),
                frame(wire::Packet::PubAck(wire::PubAck::new(9))),
            ];
            device.forward(&frames, &mut replies).await.unwrap();
            assert_eq!(
                &replies[..],
                &[0x40, 0x02, 0x00, pkid as u8, 0xd0, 0x00],
                "PUBACK {pkid} and PINGRESP at once"
            );
            // The coordinator gets the report (QoS 1) and its PUBACK is taken; the router's own
            // PUBACK to the device is not passed on twice.
            let delivered = publishes(received(&mut coordinator).await);
            let [delivered] = &delivered[..] else { panic!("{} delivered", delivered.len()) };
            assert_eq!(&delivered.payload[..], b"sealed");
            let mut out = BytesMut::new();
            let id = publish_qos_and_id(&{
                V4.write(Packet::Publish(delivered.clone(), None), &mut out).unwrap();
                out.clone()
            })
            .unwrap();
            assert_eq!(id.0, 1, "delivered at QoS 1");
            coordinator
                .forward(&[frame(wire::Packet::PubAck(wire::PubAck::new(id.1)))], &mut BytesMut::new())
                .await
                .unwrap();
            let extra = received(&mut device).await;
            assert!(extra.is_empty(), "reached the device besides its PUBACK: {extra:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_coordinator_gets_more_than_rumqttds_100_deliveries_before_it_acks() {
        let broker = broker();
        let (mut coordinator, _) = coordinator_on(&broker, "outpost/v1/+/report").await;
        let mut device = open(&broker, A, true).await;
        let reports: Vec<Bytes> = (1..=150u16)
            .map(|pkid| {
                let mut p = wire::Publish::new(format!("outpost/v1/{A}/report"), QoS::AtLeastOnce, vec![1]);
                p.pkid = pkid;
                frame(wire::Packet::Publish(p))
            })
            .collect();
        device.forward(&reports, &mut BytesMut::new()).await.unwrap();
        let delivered = publishes(received(&mut coordinator).await);
        assert_eq!(delivered.len(), 150, "deliveries before the coordinator acknowledged any");
        // Its acks are taken (each frees a place in its window) and end nothing.
        let acks: Vec<Bytes> =
            (1..=150u16).map(|id| frame(wire::Packet::PubAck(wire::PubAck::new(id)))).collect();
        coordinator.forward(&acks, &mut BytesMut::new()).await.unwrap();
        assert_eq!(coordinator.window.as_ref().map(|w| w.unacked), Some(0));
        assert!(received(&mut coordinator).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_zero_keep_alive_and_a_non_connect_are_refused() {
        let broker = broker();
        let zero = Session::open(&broker, A, &connect(A, 0, false), MAX).await.err();
        assert!(matches!(zero, Some(SessionError::ZeroKeepAlive)), "{zero:?}");
        let ping = Session::open(&broker, A, &frame(wire::Packet::PingReq), MAX).await.err();
        assert!(matches!(ping, Some(SessionError::NotConnect)), "{ping:?}");
        assert_eq!(open(&broker, A, false).await.keep_alive(), Duration::from_secs(45));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_device_is_held_to_its_own_topics_after_decoding_too() {
        let broker = broker();
        let mut device = open(&broker, A, true).await;
        let elsewhere = [
            frame(wire::Packet::Publish(wire::Publish::new(
                format!("outpost/v1/{B}/report"),
                QoS::AtMostOnce,
                vec![1],
            ))),
            frame(wire::Packet::Subscribe(wire::Subscribe::new("outpost/v1/+/report", QoS::AtMostOnce))),
        ];
        for packet in elsewhere {
            let refused = device.forward(&[packet], &mut BytesMut::new()).await.err();
            assert!(matches!(refused, Some(SessionError::Outside { .. })), "{refused:?}");
        }
        let mut retained_report =
            wire::Publish::new(format!("outpost/v1/{A}/report"), QoS::AtMostOnce, vec![1]);
        retained_report.retain = true;
        assert!(
            device
                .forward(&[frame(wire::Packet::Publish(retained_report))], &mut BytesMut::new())
                .await
                .is_err()
        );
    }
}
