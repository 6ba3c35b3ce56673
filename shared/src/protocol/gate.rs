//! What one MQTT client may say to the broker, decided packet by packet (DESIGN §6).
//!
//! A [`Gate`] sits on the bytes a client sends, frames them as MQTT 3.1.1 packets (rumqttc's
//! own codec) and passes a packet on only if the client's identity — the common name of the
//! certificate its TLS handshake proved, never anything the client says — allows it:
//!
//! - **CONNECT** first and only once, protocol 3.1.1, client id equal to the identity; a last
//!   will only on the device's own `presence` topic.
//! - **PUBLISH** only on its own `report` (never retained) and `presence` topics.
//! - **SUBSCRIBE** only to its own `desired` and `ack` topics.
//! - Acknowledgements, ping, unsubscribe and disconnect pass; anything a server sends
//!   (CONNACK, SUBACK, …) or cannot be parsed ends the connection.
//!
//! The coordinator's identity ([`COORDINATOR`]) is reserved: a gate for it is made only by
//! [`Gate::coordinator`], which the embedded broker's front calls for the one certificate it
//! issued the coordinator itself; a device gate refuses that name whatever certificate
//! carries it. The coordinator's packets pass unchecked after its
//! CONNECT. Everything here is pure: the front does the I/O, the fuzz target feeds bytes.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{Connect, Packet};
use rumqttc::mqttbytes::{Error as CodecError, Protocol};

use crate::names::shown;
use crate::protocol::topics::{self, Channel};

/// The coordinator's MQTT identity: its client id and certificate common name.
pub const COORDINATOR: &str = "outpost-coordinator";

/// Why a client's packet was refused; the front counts it under [`Refusal::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the first packet must be CONNECT, got {0}")]
    NotConnect(&'static str),
    #[error("MQTT protocol {0} is not spoken here; connect with MQTT 3.1.1")]
    Protocol(String),
    #[error("client id `{presented}` is not this certificate's identity `{identity}`")]
    ClientId { presented: String, identity: String },
    #[error("`{identity}` may not leave a last will on `{topic}` (only on its own presence topic)")]
    Will { identity: String, topic: String },
    #[error("`{identity}` may not publish to `{topic}`{}", if *retain { " retained" } else { "" })]
    Publish { identity: String, topic: String, retain: bool },
    #[error("`{identity}` may not subscribe to `{filter}` (only its own desired and ack topics)")]
    Subscribe { identity: String, filter: String },
    #[error("a client may not send {0}")]
    Unexpected(&'static str),
    #[error("malformed MQTT packet: {0}")]
    Malformed(String),
}

impl Refusal {
    /// A short label for metrics and audit: `client_id`, `publish`, `subscribe`, ….
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotConnect(_) | Refusal::Unexpected(_) => "unexpected_packet",
            Refusal::Protocol(_) => "protocol",
            Refusal::ClientId { .. } => "client_id",
            Refusal::Will { .. } => "will",
            Refusal::Publish { .. } => "publish",
            Refusal::Subscribe { .. } => "subscribe",
            Refusal::Malformed(_) => "malformed",
        }
    }

    /// The CONNACK return code to answer a refused CONNECT with (MQTT 3.1.1 §3.2.2.3):
    /// 1 for a protocol version, 2 for a client id, 5 (not authorized) otherwise.
    pub fn connack_code(&self) -> u8 {
        match self {
            Refusal::Protocol(_) => 1,
            Refusal::ClientId { .. } => 2,
            _ => 5,
        }
    }
}

/// Whose packets these are.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Coordinator,
    Device(String),
}

/// One client connection's gate. Feed it every byte the client sends, in order.
#[derive(Debug)]
pub struct Gate {
    who: Who,
    max_packet: usize,
    buffer: BytesMut,
    connected: bool,
}

impl Gate {
    /// A gate for a device whose certificate names `identity`; packets above `max_packet`
    /// bytes are refused.
    pub fn device(identity: &str, max_packet: usize) -> Gate {
        Gate::new(Who::Device(identity.to_owned()), max_packet)
    }

    /// A gate for the coordinator itself: its CONNECT must use [`COORDINATOR`] as client id;
    /// after that everything passes.
    pub fn coordinator(max_packet: usize) -> Gate {
        Gate::new(Who::Coordinator, max_packet)
    }

    fn new(who: Who, max_packet: usize) -> Gate {
        Gate { who, max_packet, buffer: BytesMut::new(), connected: false }
    }

    /// The identity this gate checks against.
    pub fn identity(&self) -> &str {
        match &self.who {
            Who::Coordinator => COORDINATOR,
            Who::Device(id) => id,
        }
    }

    /// Whether the client's CONNECT has passed.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Takes bytes the client sent; returns the bytes to forward to the broker (whole packets,
    /// as sent), keeping an incomplete packet for the next call. The first
    /// refusal ends the connection: the caller must stop forwarding.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Bytes>, Refusal> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let length = match rumqttc::mqttbytes::check(self.buffer.iter(), self.max_packet) {
                Ok(header) => header.frame_length(),
                Err(CodecError::InsufficientBytes(_)) => return Ok(out),
                Err(e) => return Err(Refusal::Malformed(e.to_string())),
            };
            let frame = self.buffer.split_to(length);
            let mut parsing = frame.clone();
            let packet = Packet::read(&mut parsing, self.max_packet).map_err(|e| match e {
                CodecError::InvalidProtocolLevel(level) => Refusal::Protocol(format!("level {level}")),
                CodecError::InvalidProtocol => Refusal::Protocol("(not MQTT)".into()),
                other => Refusal::Malformed(other.to_string()),
            })?;
            out.push(self.admit(packet, frame.freeze())?);
        }
    }

    /// Checks one whole packet; returns the bytes to forward for it.
    fn admit(&mut self, packet: Packet, frame: Bytes) -> Result<Bytes, Refusal> {
        if !self.connected {
            let Packet::Connect(connect) = packet else {
                return Err(Refusal::NotConnect(name(&packet)));
            };
            self.connect(&connect)?;
            return Ok(frame);
        }
        let Who::Device(identity) = &self.who else {
            return match packet {
                Packet::Connect(_) => Err(Refusal::Unexpected("a second CONNECT")),
                _ => Ok(frame),
            };
        };
        match &packet {
            Packet::Publish(publish) => {
                if !may_publish(identity, &publish.topic, publish.retain) {
                    return Err(Refusal::Publish {
                        identity: identity.clone(),
                        topic: shown(&publish.topic),
                        retain: publish.retain,
                    });
                }
            }
            Packet::Subscribe(subscribe) => {
                for filter in &subscribe.filters {
                    if !may_subscribe(identity, &filter.path) {
                        return Err(Refusal::Subscribe {
                            identity: identity.clone(),
                            filter: shown(&filter.path),
                        });
                    }
                }
            }
            Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq
            | Packet::Disconnect => {}
            Packet::Connect(_) => return Err(Refusal::Unexpected("a second CONNECT")),
            other => return Err(Refusal::Unexpected(name(other))),
        }
        Ok(frame)
    }

    fn connect(&mut self, connect: &Connect) -> Result<(), Refusal> {
        if connect.protocol == Protocol::V5 {
            return Err(Refusal::Protocol("5".into()));
        }
        let identity = self.identity().to_owned();
        let impostor = matches!(&self.who, Who::Device(id) if id == COORDINATOR);
        if connect.client_id != identity || impostor {
            return Err(Refusal::ClientId { presented: shown(&connect.client_id), identity });
        }
        if let (Who::Device(id), Some(will)) = (&self.who, &connect.last_will) {
            let own = matches!(topics::parse(&will.topic), Some((device, Channel::Presence)) if device == id);
            if !own {
                return Err(Refusal::Will { identity, topic: shown(&will.topic) });
            }
        }
        self.connected = true;
        Ok(())
    }
}

/// Whether device `identity` may publish on `topic`: its own `report` (never retained) and
/// `presence` only. The one rule, for the gate and for whatever decodes the same bytes again.
pub fn may_publish(identity: &str, topic: &str, retain: bool) -> bool {
    match topics::parse(topic) {
        Some((device, Channel::Report)) => device == identity && !retain,
        Some((device, Channel::Presence)) => device == identity,
        _ => false,
    }
}

/// Whether device `identity` may subscribe to `filter`: its own `desired` and `ack` only.
pub fn may_subscribe(identity: &str, filter: &str) -> bool {
    matches!(topics::parse(filter), Some((device, Channel::Desired | Channel::Ack)) if device == identity)
}

/// A CONNACK refusing a connection with `code` (MQTT 3.1.1 §3.2).
pub fn connack_refusal(code: u8) -> [u8; 4] {
    [0x20, 0x02, 0x00, code]
}

fn name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

#[cfg(test)]
mod tests {
    use rumqttc::mqttbytes::QoS;
    use rumqttc::mqttbytes::v4::{LastWill, Publish, Subscribe};

    use super::*;

    const A: &str = "dev-aaaaaaaaaaaaaaaa";
    const B: &str = "dev-bbbbbbbbbbbbbbbb";

    fn bytes(packet: Packet) -> Vec<u8> {
        let mut out = BytesMut::new();
        packet.write(&mut out, usize::MAX).unwrap();
        out.to_vec()
    }

    fn connect(client_id: &str) -> Vec<u8> {
        bytes(Packet::Connect(Connect::new(client_id)))
    }

    fn publish(topic: &str, retain: bool) -> Vec<u8> {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, b"x".to_vec());
        p.pkid = 1;
        p.retain = retain;
        bytes(Packet::Publish(p))
    }

    fn subscribe(filter: &str) -> Vec<u8> {
        let mut s = Subscribe::new(filter, QoS::AtLeastOnce);
        s.pkid = 2;
        bytes(Packet::Subscribe(s))
    }

    fn connected(identity: &str) -> Gate {
        let mut gate = Gate::device(identity, 1 << 20);
        gate.feed(&connect(identity)).unwrap();
        gate
    }

    #[test]
    fn a_connect_with_the_certificates_identity_passes_as_sent() {
        let mut gate = Gate::device(A, 1 << 20);
        let sent = connect(A);
        assert!(!gate.connected());
        assert_eq!(gate.feed(&sent).unwrap(), vec![Bytes::from(sent)]);
        assert!(gate.connected());
    }

    #[test]
    fn another_devices_client_id_or_the_coordinators_is_refused() {
        for presented in [B, COORDINATOR] {
            let mut gate = Gate::device(A, 1 << 20);
            let refusal = gate.feed(&connect(presented)).unwrap_err();
            assert_eq!(refusal.reason(), "client_id", "{presented}");
            assert_eq!(refusal.connack_code(), 2);
        }
        // A device certificate that carries the coordinator's name gets a device gate, which
        // refuses that name.
        let mut gate = Gate::device(COORDINATOR, 1 << 20);
        assert_eq!(gate.feed(&connect(COORDINATOR)).unwrap_err().reason(), "client_id");
    }

    #[test]
    fn a_device_publishes_and_subscribes_only_on_its_own_topics() {
        let mut gate = connected(A);
        for ok in [
            publish(&format!("outpost/v1/{A}/report"), false),
            publish(&format!("outpost/v1/{A}/presence"), true),
        ] {
            assert_eq!(gate.feed(&ok).unwrap(), vec![Bytes::from(ok.clone())]);
        }
        for ok in [subscribe(&format!("outpost/v1/{A}/desired")), subscribe(&format!("outpost/v1/{A}/ack"))] {
            assert_eq!(gate.feed(&ok).unwrap().len(), 1);
        }
        let refused = [
            publish(&format!("outpost/v1/{B}/report"), false),
            publish(&format!("outpost/v1/{B}/presence"), true),
            publish(&format!("outpost/v1/{A}/desired"), true),
            publish(&format!("outpost/v1/{A}/report"), true),
            publish("elsewhere", false),
            subscribe(&format!("outpost/v1/{B}/desired")),
            subscribe(&format!("outpost/v1/{A}/#")),
            subscribe("outpost/v1/+/report"),
            subscribe("#"),
            subscribe(&format!("outpost/v1/{A}/report")),
        ];
        for packet in refused {
            let mut gate = connected(A);
            assert!(gate.feed(&packet).is_err(), "{packet:?}");
        }
    }

    #[test]
    fn packets_split_anywhere_are_reassembled() {
        let mut gate = connected(A);
        let packet = publish(&format!("outpost/v1/{A}/report"), false);
        let (head, tail) = packet.split_at(5);
        assert!(gate.feed(head).unwrap().is_empty());
        assert_eq!(gate.feed(tail).unwrap().concat(), packet);
        let two = [packet.clone(), packet.clone()].concat();
        assert_eq!(gate.feed(&two).unwrap().len(), 2);
    }

    #[test]
    fn a_will_on_another_topic_and_anything_before_connect_are_refused() {
        let mut c = Connect::new(A);
        c.last_will =
            Some(LastWill::new(format!("outpost/v1/{B}/presence"), b"off".to_vec(), QoS::AtLeastOnce, true));
        assert_eq!(Gate::device(A, 1 << 20).feed(&bytes(Packet::Connect(c))).unwrap_err().reason(), "will");
        let mut gate = Gate::device(A, 1 << 20);
        let refusal = gate.feed(&publish(&format!("outpost/v1/{A}/report"), false)).unwrap_err();
        assert_eq!(refusal, Refusal::NotConnect("PUBLISH"));
        assert_eq!(connected(A).feed(&connect(A)).unwrap_err().reason(), "unexpected_packet");
    }

    #[test]
    fn the_coordinator_gate_checks_only_its_client_id() {
        let mut gate = Gate::coordinator(1 << 20);
        assert_eq!(gate.feed(&connect(A)).unwrap_err().reason(), "client_id");
        let mut gate = Gate::coordinator(1 << 20);
        gate.feed(&connect(COORDINATOR)).unwrap();
        assert_eq!(gate.feed(&subscribe("outpost/v1/+/report")).unwrap().len(), 1);
        assert_eq!(gate.feed(&publish(&format!("outpost/v1/{A}/desired"), true)).unwrap().len(), 1);
    }

    #[test]
    fn oversized_and_garbage_bytes_are_refused_not_buffered() {
        let mut gate = Gate::device(A, 1024);
        let big = publish(&format!("outpost/v1/{A}/report"), false);
        let mut huge = Publish::new(format!("outpost/v1/{A}/report"), QoS::AtMostOnce, vec![0u8; 4096]);
        huge.retain = false;
        gate.feed(&connect(A)).unwrap();
        assert!(gate.feed(&big).is_ok());
        assert_eq!(gate.feed(&bytes(Packet::Publish(huge))).unwrap_err().reason(), "malformed");
        let mut gate = Gate::device(A, 1024);
        assert!(gate.feed(&[0xff; 8]).is_err());
        let mut gate = Gate::device(A, 1024);
        // MQTT 5 CONNECT (protocol level 5).
        let v5 = [0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x00];
        assert_eq!(gate.feed(&v5).unwrap_err().reason(), "protocol");
    }
}
