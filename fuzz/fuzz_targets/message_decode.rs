//! Arbitrary bytes as a message body (report, prediction batch, ack, desired state): decoding
//! must never panic, and whatever decodes must re-encode to bytes that decode the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_shared::protocol::messages;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = messages::decode_agent(data) {
        if let messages::AgentMessage::Report(report) = &message {
            for window in &report.models {
                let _ = window.latency_us.quantile(0.99);
            }
        }
        let again = messages::encode(&message);
        assert!(messages::decode_agent(&again).is_ok(), "re-encoded agent message does not decode");
    }
    if let Ok(message) = messages::decode_coordinator(data) {
        let again = messages::encode(&message);
        assert!(messages::decode_coordinator(&again).is_ok(), "re-encoded coordinator message does not decode");
    }
});
