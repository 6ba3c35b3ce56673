//! Fleet tests against both brokers: a coordinator and either a real Mosquitto (with the topic
//! ACL from `deploy/`) or the coordinator's embedded broker, sharing the coordinator's CA in one
//! temporary folder, and agents enrolled into it. [`against_both_brokers!`] runs a test body
//! once per broker.
//!
//! The embedded broker lives in the coordinator's process, so for it "the broker is down"
//! means the coordinator is down too (stopped with SIGTERM).

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::Agent;
use crate::fleet::{Coordinator, Mosquitto, enroll, publish};
use crate::model;

/// Which broker a fleet test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mosquitto,
    Embedded,
}

pub enum Broker {
    Mosquitto(Mosquitto),
    Embedded { port: u16 },
}

/// A coordinator and a broker sharing the coordinator's CA, in one temporary folder.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub broker: Broker,
    pub coordinator: Coordinator,
}

/// A coordinator and a broker of `kind`, ready.
pub fn fleet(kind: Kind) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator");
    match kind {
        Kind::Mosquitto => {
            Coordinator::init(&data);
            let broker = Mosquitto::start(dir.path(), &data);
            let coordinator = Coordinator::start(&data, &broker.url());
            Fleet { dir, broker: Broker::Mosquitto(broker), coordinator }
        }
        Kind::Embedded => {
            let (coordinator, port) = Coordinator::start_embedded(&data);
            Fleet { dir, broker: Broker::Embedded { port }, coordinator }
        }
    }
}

impl Fleet {
    pub fn broker_port(&self) -> u16 {
        match &self.broker {
            Broker::Mosquitto(m) => m.port,
            Broker::Embedded { port } => *port,
        }
    }

    /// Takes the broker away (for the embedded broker: its coordinator with it).
    pub fn stop_broker(&mut self) {
        match &mut self.broker {
            Broker::Mosquitto(m) => m.stop(),
            Broker::Embedded { .. } => self.coordinator.stop(Signal::SIGTERM),
        }
    }

    pub fn resume_broker(&mut self) {
        match &mut self.broker {
            Broker::Mosquitto(m) => m.resume(),
            Broker::Embedded { .. } => self.coordinator.resume(),
        }
    }

    pub fn publish(&self, topic: &str, payload: &Path, client: Option<(&Path, &Path)>, ca: &Path) -> bool {
        publish(self.broker_port(), topic, payload, client, ca)
    }

    /// Enrols a fresh agent data dir; returns (data dir, device id).
    pub fn enrolled_agent_dir(&self, name: &str) -> (std::path::PathBuf, String) {
        let dir = self.dir.path().join(name);
        let token = self.coordinator.token("site=test,hw=ci");
        let device = enroll(&dir, &self.coordinator, &token).unwrap();
        (dir, device)
    }
}

/// An enrolled, ready agent whose first telemetry already reached the coordinator.
pub async fn connected_agent(fleet: &Fleet) -> (std::path::PathBuf, String, Agent) {
    let (dir, device) = fleet.enrolled_agent_dir("agent");
    let agent = start_agent(&dir, &[]);
    agent.wait_ready(Duration::from_secs(30)).await;
    fleet
        .coordinator
        .wait_device(&device, Duration::from_secs(20), |v| v["counts"]["envelopes"].as_u64() > Some(0))
        .await;
    (dir, device, agent)
}

/// Starts the agent in `dir` serving `bc` with 1 s telemetry, `extra` in its environment.
pub fn start_agent(dir: &Path, extra: &[(&str, &str)]) -> Agent {
    let mut builder = Agent::builder()
        .model("bc", &model("breast_cancer-1.0.0"))
        .data_dir(dir)
        .env("OUTPOST_TELEMETRY__INTERVAL_SECS", "1")
        .env("OUTPOST_TELEMETRY__ACK_TIMEOUT_SECS", "3");
    for (k, v) in extra {
        builder = builder.env(k, v);
    }
    builder.start()
}

/// Runs each `async fn name(kind: Kind)` in scope as two tests, `mosquitto::name` and
/// `embedded_broker::name`.
#[macro_export]
macro_rules! against_both_brokers {
    ($($name:ident),* $(,)?) => {
        mod mosquitto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::brokers::Kind::Mosquitto).await
                }
            )*
        }
        mod embedded_broker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::brokers::Kind::Embedded).await
                }
            )*
        }
    };
}
