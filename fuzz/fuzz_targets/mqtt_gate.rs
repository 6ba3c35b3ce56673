//! Arbitrary client bytes through the embedded broker's per-packet gate, fed in arbitrary
//! pieces: it never panics, forwards only whole packets it was given, and after a device's CONNECT passes nothing it forwards is a PUBLISH or SUBSCRIBE
//! outside that device's own topics. Each forwarded frame is also decoded with rumqttd's codec,
//! as the embedded broker's session does: it must not panic, and what it reads must be the
//! same topics (the session refuses a disagreement; this shows the two codecs agree).
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_shared::protocol::gate::Gate;
use outpost_shared::protocol::topics::{self, Channel};
use rumqttc::mqttbytes::v4::Packet;

const DEVICE: &str = "dev-0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size; the rest is the stream.
    let Some((&split, stream)) = data.split_first() else { return };
    let piece = usize::from(split).max(1);
    let mut gate = Gate::device(DEVICE, 64 * 1024);
    let mut forwarded = Vec::new();
    for chunk in stream.chunks(piece) {
        match gate.feed(chunk) {
            Ok(frames) => forwarded.extend(frames),
            Err(refusal) => {
                let message = refusal.to_string();
                assert!(!message.contains(|c: char| c.is_control()), "control characters in {message:?}");
                break;
            }
        }
    }
    for frame in forwarded {
        let mut again = bytes::BytesMut::from(&frame[..]);
        match rumqttd::protocol::Protocol::read_mut(&mut rumqttd::protocol::v4::V4, &mut again, usize::MAX) {
            Ok(rumqttd::protocol::Packet::Publish(p, _)) => {
                let topic = String::from_utf8_lossy(&p.topic);
                let own = matches!(topics::parse(&topic), Some((d, Channel::Report | Channel::Presence)) if d == DEVICE);
                assert!(own, "rumqttd reads a publish to {topic:?} where the gate passed the device's own");
            }
            Ok(rumqttd::protocol::Packet::Subscribe(s, _)) => {
                for f in s.filters {
                    let own = matches!(topics::parse(&f.path), Some((d, Channel::Desired | Channel::Ack)) if d == DEVICE);
                    assert!(own, "rumqttd reads a subscription to {:?}", f.path);
                }
            }
            _ => {}
        }
        let mut bytes = bytes::BytesMut::from(&frame[..]);
        let packet = Packet::read(&mut bytes, usize::MAX).expect("a forwarded frame is one whole packet");
        match packet {
            Packet::Publish(p) => {
                let own = matches!(topics::parse(&p.topic), Some((d, Channel::Report | Channel::Presence)) if d == DEVICE);
                assert!(own, "forwarded a publish to {:?}", p.topic);
            }
            Packet::Subscribe(s) => {
                for f in s.filters {
                    let own = matches!(topics::parse(&f.path), Some((d, Channel::Desired | Channel::Ack)) if d == DEVICE);
                    assert!(own, "forwarded a subscription to {:?}", f.path);
                }
            }
            Packet::Connect(c) => {
                assert_eq!(c.client_id, DEVICE);
            }
            _ => {}
        }
    }
});
