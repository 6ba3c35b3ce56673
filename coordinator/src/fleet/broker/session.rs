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

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use outpost_shared::protocol::gate::COORDINATOR;
use outpost_shared::protocol::topics::{self, Channel};
use rumqttd::Notification;
use rumqttd::local::{LinkError, LinkRx, LinkTx};
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
    Link(#[from] LinkError),
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
        let (tx, rx) = tokio::task::spawn_blocking(move || broker.link(&client_id))
            .await
            .map_err(|_| SessionError::RouterGone)??;
        let mut connack = BytesMut::new();
        let ack = ConnAck { session_present: false, code: ConnectReturnCode::Success };
        codec.write(Packet::ConnAck(ack, None), &mut connack).map_err(|e| SessionError::Decode(format!("{e:?}")))?;
        let session = Session {
            identity: identity.to_owned(),
            tx,
            rx,
            codec,
            max_packet,
            will,
            keep_alive: Duration::from_millis(u64::from(connect.keep_alive) * 1500),
        };
        Ok((session, connack.freeze()))
    }

    /// How long the client may stay silent (1.5 × its keep-alive).
    pub fn keep_alive(&self) -> Duration {
        self.keep_alive
    }

    /// Passes admitted packets to the router; `true` when the client said DISCONNECT (its
    /// will is then dropped, and the session is over).
    ///
    /// rumqttd's link hands packets over on a bounded channel with a blocking send: when the
    /// router is 1,000 events behind, this worker waits for it. The router thread never waits
    /// on anything async, so that wait is short and cannot deadlock.
    pub async fn forward(&mut self, frames: &[Bytes]) -> Result<bool, SessionError> {
        let mut disconnect = false;
        let mut last = None;
        for frame in frames {
            let packet = self
                .codec
                .read_mut(&mut BytesMut::from(&frame[..]), self.max_packet)
                .map_err(|e| SessionError::Decode(format!("{e:?}")))?;
            self.check(&packet)?;
            if matches!(packet, Packet::Disconnect(..)) {
                self.will = None;
                disconnect = true;
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
            self.tx.send(packet).await?;
        }
        Ok(disconnect)
    }

    /// A device's packets after rumqttd's decoding: own topics only, as the gate decided on
    /// rumqttc's decoding of the same bytes.
    fn check(&self, packet: &Packet) -> Result<(), SessionError> {
        if self.identity == COORDINATOR {
            return Ok(());
        }
        let own = |topic: &str, allowed: &[Channel]| {
            matches!(topics::parse(topic), Some((device, channel)) if device == self.identity && allowed.contains(&channel))
        };
        let outside = |what, topic: &str| SessionError::Outside {
            identity: self.identity.clone(),
            what,
            topic: outpost_shared::names::shown(topic),
        };
        match packet {
            Packet::Publish(publish, _) => {
                let topic = String::from_utf8_lossy(&publish.topic);
                let allowed = if publish.retain { &[Channel::Presence][..] } else { &[Channel::Report, Channel::Presence] };
                if !own(&topic, allowed) {
                    return Err(outside("publish on", &topic));
                }
            }
            Packet::Subscribe(subscribe, _) => {
                if let Some(filter) =
                    subscribe.filters.iter().find(|f| !own(&f.path, &[Channel::Desired, Channel::Ack]))
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
        self.encode(first, out, &mut received)?;
        // Whatever else is already waiting goes out in the same write.
        while received.open {
            match self.rx.next().now_or_never() {
                Some(Ok(Some(notification))) => self.encode(Some(notification), out, &mut received)?,
                Some(Ok(None)) | None => break,
                Some(Err(_)) => return Err(SessionError::RouterGone),
            }
        }
        Ok(received)
    }

    fn encode(
        &mut self,
        notification: Option<Notification>,
        out: &mut BytesMut,
        received: &mut Received,
    ) -> Result<(), SessionError> {
        let Some(notification) = notification else { return Ok(()) };
        if matches!(notification, Notification::Disconnect(..)) {
            received.open = false;
        }
        match Option::<Packet>::from(notification) {
            Some(packet) => {
                self.codec.write(packet, out).map_err(|e| SessionError::Decode(format!("{e:?}")))?;
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
