//! MQTT topic names (DESIGN §5): `outpost/v1/{device}/{channel}`.
//!
//! Device ids are 1–64 characters of `[A-Za-z0-9_-]`, so they can never contain MQTT's
//! separators or wildcards (`/`, `+`, `#`).

use std::fmt;

/// Topic prefix shared by every Outpost topic of this protocol version.
pub const PREFIX: &str = "outpost/v1";

/// What a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Agent → coordinator: reports, prediction batches, events, actual state.
    Report,
    /// Coordinator → agent, retained: the signed desired state.
    Desired,
    /// Coordinator → agent: end-to-end acknowledgements of stored reports.
    Ack,
    /// Retained online/offline marker; the agent's last will sets offline.
    Presence,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Report => "report",
            Channel::Desired => "desired",
            Channel::Ack => "ack",
            Channel::Presence => "presence",
        }
    }

    fn parse(s: &str) -> Option<Channel> {
        [Channel::Report, Channel::Desired, Channel::Ack, Channel::Presence]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a device id is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device id `{0}` must be 1 to 64 characters of letters, digits, `_` and `-`")]
pub struct InvalidDeviceId(pub String);

/// Checks a device id.
pub fn validate_device_id(id: &str) -> Result<(), InvalidDeviceId> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(InvalidDeviceId(id.to_owned())) }
}

/// The topic of `channel` for `device`.
pub fn topic(device: &str, channel: Channel) -> Result<String, InvalidDeviceId> {
    validate_device_id(device)?;
    Ok(format!("{PREFIX}/{device}/{channel}"))
}

/// The subscription filter matching `channel` for every device.
pub fn all_devices(channel: Channel) -> String {
    format!("{PREFIX}/+/{channel}")
}

/// Splits a topic into device id and channel; `None` for anything else.
pub fn parse(topic: &str) -> Option<(&str, Channel)> {
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
    let (device, channel) = rest.split_once('/')?;
    validate_device_id(device).ok()?;
    Some((device, Channel::parse(channel)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_refuse_wildcards() {
        let t = topic("edge-01", Channel::Report).unwrap();
        assert_eq!(t, "outpost/v1/edge-01/report");
        assert_eq!(parse(&t), Some(("edge-01", Channel::Report)));
        assert_eq!(all_devices(Channel::Ack), "outpost/v1/+/ack");
        for bad in ["", "a/b", "+", "#", "dev ice", &"x".repeat(65)] {
            assert!(topic(bad, Channel::Desired).is_err(), "{bad:?}");
        }
        for bad in ["outpost/v2/a/report", "outpost/v1/a/report/x", "outpost/v1/a/other", "outpost/v1/+/ack"]
        {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
