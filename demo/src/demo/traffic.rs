//! The demo's labelled traffic: rows drawn from the held-out data sent to every agent, each
//! answer's true label sent back to `/v1/feedback`, one site's inputs drifting on request.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Labelled traffic to every agent, counted per version that answered.
pub(super) struct Traffic {
    pub(super) stop: Arc<AtomicBool>,
    /// Once set, the drifting agent's inputs are shifted (see [`DRIFTED`]).
    pub(super) drift: Arc<AtomicBool>,
    pub(super) answered: Arc<Mutex<BTreeMap<String, u64>>>,
    pub(super) failed: Arc<AtomicU64>,
    pub(super) threads: Vec<std::thread::JoinHandle<()>>,
}

/// The features the demo's drifting agent shifts, in column order.
const DRIFTED: [&str; 2] = ["mean_radius", "mean_texture"];

/// Which agent's inputs drift: the one on site-c (the third), or the last of fewer.
pub(super) fn drift_agent(agents: usize) -> usize {
    agents.saturating_sub(1).min(2)
}

/// Held-out rows: (features, label).
pub(super) fn holdout(path: &Path) -> Result<Vec<(Vec<f64>, i64)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let label = header.iter().position(|h| *h == "label").ok_or("the held-out file has no `label` column")?;
    if header.get(..2) != Some(&DRIFTED[..]) {
        return Err(format!("the held-out file should start with the columns {DRIFTED:?}"));
    }
    let mut rows = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        let mut features = Vec::new();
        for (i, c) in cells.iter().enumerate() {
            if i != label {
                features.push(c.parse::<f64>().map_err(|e| format!("held-out value `{c}`: {e}"))?);
            }
        }
        let y = cells.get(label).and_then(|c| c.parse::<f64>().ok()).ok_or("bad label")? as i64;
        rows.push((features, y));
    }
    Ok(rows)
}

impl Traffic {
    pub(super) fn start(agents: &[String], rows: Arc<Vec<(Vec<f64>, i64)>>, rate: u32) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let drift = Arc::new(AtomicBool::new(false));
        let drifting = drift_agent(agents.len());
        let answered = Arc::new(Mutex::new(BTreeMap::new()));
        let failed = Arc::new(AtomicU64::new(0));
        let every = Duration::from_secs_f64(1.0 / f64::from(rate));
        let threads = agents
            .iter()
            .enumerate()
            .map(|(n, base)| {
                let (stop, answered, failed, rows) =
                    (Arc::clone(&stop), Arc::clone(&answered), Arc::clone(&failed), Arc::clone(&rows));
                let drift = (n == drifting).then(|| Arc::clone(&drift));
                let base = base.clone();
                std::thread::spawn(move || {
                    let Ok(http) = outpost_shared::tls::api_client(&base, None, Duration::from_secs(10))
                    else {
                        return;
                    };
                    // xorshift: a different, reproducible sequence of rows per agent.
                    let mut state =
                        0x9e37_79b9_7f4a_7c15_u64 ^ (n as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let (features, label) = &rows[(state % rows.len() as u64) as usize];
                        let mut features = features.clone();
                        if drift.as_ref().is_some_and(|d| d.load(Ordering::Relaxed)) {
                            // A recalibrated sensor (the first two columns are mean_radius and
                            // mean_texture, checked when the rows are read).
                            features[0] *= 1.3;
                            features[1] += 8.0;
                        }
                        let body = json!({"inputs": [{"name": "input", "datatype": "FP32",
                            "shape": [1, features.len()], "data": features}]});
                        let answer = http
                            .post(format!("{base}/v2/models/bc/infer"))
                            .send_json(&body)
                            .ok()
                            .filter(|r| r.status().is_success())
                            .and_then(|mut r| r.body_mut().read_json::<Value>().ok());
                        match answer
                            .as_ref()
                            .and_then(|a| Some((a["parameters"]["prediction_ids"][0].as_u64()?, a)))
                        {
                            Some((id, a)) => {
                                let version = a["model_version"].as_str().unwrap_or("?").to_owned();
                                *answered
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .entry(version)
                                    .or_default() += 1;
                                let _ = http
                                    .post(format!("{base}/v1/feedback"))
                                    .send_json(json!({"prediction_id": id, "label": label}));
                            }
                            None => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        next += every;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            next = now;
                        }
                    }
                })
            })
            .collect();
        Traffic { stop, drift, answered, failed, threads }
    }

    pub(super) fn summary(&self) -> String {
        let answered = self.answered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let parts: Vec<String> = answered.iter().map(|(v, n)| format!("{v}: {n}")).collect();
        format!("answered so far — {}; failed {}", parts.join(", "), self.failed.load(Ordering::Relaxed))
    }

    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
