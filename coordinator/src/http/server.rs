//! `outpost-coordinator serve`: opens the state, CA and keys, connects to the broker, and
//! serves the API until SIGTERM or SIGINT.
//!
//! This is the coordinator's composition root. It sits on the top floor because it is the one
//! place that builds [`AppState`]: engines get their narrow handles here, never the state.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::base::audit::AuditLog;
use crate::base::backing::{Backing, Shared};
use crate::base::metrics::Metrics;
use crate::base::secrets::Secrets;
use crate::base::store::Store;
use crate::config::Config;
use crate::fleet::ca::Authority;
use crate::fleet::link::{self, LinkSettings};
use crate::http::api::AppState;

mod records;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Ca(#[from] crate::fleet::ca::CaError),
    #[error(transparent)]
    Store(#[from] crate::base::store::StoreError),
    #[error("cannot read {path}: {source}")]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: std::path::PathBuf, source: std::io::Error },
    #[error("broker TLS settings: {0}")]
    Tls(#[from] outpost_shared::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("server failed: {0}")]
    Server(std::io::Error),
    #[error(transparent)]
    Broker(#[from] crate::fleet::broker::BrokerError),
    #[error(transparent)]
    Revocation(#[from] crate::fleet::revocation::RevocationError),
    #[error("{0}")]
    Audit(String),
    #[error(transparent)]
    Roots(#[from] crate::fleet::roots::RootsError),
    #[error(transparent)]
    Secrets(#[from] crate::base::secrets::SecretsError),
    #[error(transparent)]
    Postgres(#[from] crate::base::pg::PgError),
    #[error(
        "store.url `{url}`: the records are in PostgreSQL, shared by replicas, and every replica must \
         reach the devices through one broker: set broker.url (an external MQTT broker with shared \
         subscriptions, e.g. mqtts://broker:8883); the embedded broker serves one process only"
    )]
    PostgresNeedsBroker { url: String },
}

impl ServeError {
    /// A key or secret that cannot be used is configuration: exit 2, like a bad config file.
    pub fn is_configuration(&self) -> bool {
        use crate::fleet::ca::CaError;
        use crate::fleet::roots::RootsError;
        matches!(
            self,
            ServeError::Config(_)
                | ServeError::PostgresNeedsBroker { .. }
                | ServeError::Secrets(_)
                | ServeError::Ca(CaError::Secret(_))
                | ServeError::Roots(RootsError::Secret(_))
        ) || matches!(self, ServeError::Postgres(e) if e.is_configuration())
    }
}

/// This process among a cluster's replicas: host name, process id and a random part (a
/// restarted process, or a pod that kept its name, is another replica).
pub fn replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "coordinator".into());
    let mut random = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    format!("{host}-{}-{}", std::process::id(), hex::encode(random))
}

/// Reads the admin token, creating it (0600, sealed with `[secrets] key`) at first start.
pub fn admin_token(data_dir: &std::path::Path, secrets: &Secrets) -> Result<String, ServeError> {
    let path = data_dir.join("admin.token");
    secrets.seal_in_place(&path)?;
    let token = match secrets.read(&path)? {
        Some(token) => token,
        None => {
            let mut secret = [0u8; 32];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret);
            let token = format!("opa_{}\n", hex::encode(secret));
            secrets.write(&path, token.as_bytes())?;
            tracing::info!(path = %path.display(), "created the admin token (give it to outpostctl with --token-file)");
            token.into_bytes()
        }
    };
    let token = String::from_utf8(token).map_err(|e| ServeError::Read {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    Ok(token.trim().to_owned())
}

pub async fn serve(config: Config) -> Result<(), ServeError> {
    config.validate()?;
    let replica = replica_id();
    // PostgreSQL is checked (and its schema brought up to date) before anything is written to
    // the data directory, so a wrong URL leaves nothing behind.
    let shared = match config.store.backend()? {
        crate::config::StoreBackend::Sled => None,
        crate::config::StoreBackend::Postgres(url) => {
            let store = records::open_postgres(&url, &replica).await?;
            if config.broker.url.is_none() {
                return Err(ServeError::PostgresNeedsBroker { url: url.masked().to_owned() });
            }
            Some((Shared::new(store, &replica), url))
        }
    };
    // State, keys and the audit log: the owner's only (0700 directory, new files 0600).
    let private = outpost_shared::files::keep_private(&config.data_dir)
        .map_err(|source| ServeError::Write { path: config.data_dir.clone(), source })?;
    if !private {
        tracing::warn!(data_dir = %config.data_dir.display(), "cannot make the data directory 0700 (not its owner); new files are still 0600");
    }
    // Secrets (CA key, signing keys, admin token): sealed under `[secrets] key` when it is set.
    let secrets = Arc::new(Secrets::from_spec(config.secrets.key.as_deref())?);
    tracing::info!(secrets = %secrets.describe(), "coordinator secrets");
    let authority = Arc::new(Authority::load_or_create(&config.data_dir, &secrets)?);
    let (backing, pg_url) = match shared {
        None => (Backing::Sled(Store::open(&config.data_dir)?), None),
        Some((shared, url)) => (Backing::Postgres(shared), Some(url)),
    };
    let admin = admin_token(&config.data_dir, &secrets)?;
    let metrics = Metrics::new();
    let records::Records { devices, desired, chain, registry, auth, sessions, audit, ingest } =
        records::open(&backing, &config.data_dir, &authority, &admin, &config, &metrics)?;
    // A fresh revocation list at every start, so an external broker's never runs out.
    let crl = crate::fleet::revocation::publish(&authority, &devices, &config.data_dir)?;
    tracing::debug!(path = %crl.display(), "revocation list written");
    let broker_ca_pem = match &config.broker.ca_file {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|source| ServeError::Read { path: path.clone(), source })?
        }
        None => authority.ca_pem().to_owned(),
    };
    let (cert, key) = authority.issue_client(outpost_shared::protocol::gate::COORDINATOR, 30)?;
    let tls = outpost_shared::tls::client_config(broker_ca_pem.as_bytes(), cert.as_bytes(), key.as_bytes())?;
    let audit = Arc::new(audit);
    let broker_front = if config.broker.url.is_none() {
        let names = config.embedded_broker_names();
        let front = crate::fleet::broker::start(crate::fleet::broker::Embedded {
            listen: config.broker.embedded_listen,
            names: &names,
            authority: &authority,
            coordinator_cert_pem: &cert,
            devices: devices.clone(),
            metrics: metrics.clone(),
            on_refusal: audit_broker_refusals(Arc::clone(&audit), metrics.clone()),
        })
        .await?;
        Some(front)
    } else {
        None
    };
    let (host, port) = config.broker_endpoint()?;
    let settings = LinkSettings {
        host,
        port,
        // Replicas share the devices' messages (a shared subscription), each under its own id.
        client_id: match &backing {
            Backing::Sled(_) => outpost_shared::protocol::gate::COORDINATOR.into(),
            Backing::Postgres(_) => format!("{}-{replica}", outpost_shared::protocol::gate::COORDINATOR),
        },
        shared: matches!(backing, Backing::Postgres(_)),
        tls,
        max_packet_bytes: config.broker.max_packet_bytes,
    };

    match audit.verify() {
        Ok(entries) => tracing::info!(entries, at = %audit.location(), "audit log verified"),
        Err(problem) => {
            tracing::error!(%problem, at = %audit.location(), "AUDIT LOG DOES NOT VERIFY")
        }
    }
    let configured = config
        .registry
        .keys()
        .map_err(|(key, problem)| ServeError::Config(crate::config::ConfigError::Key { key, problem }))?;
    // The trust root: version 1 names the release key (when the registry signs) and the
    // configured keys as release keys; the registry trusts whatever the current root names.
    let first_release: Vec<_> = config
        .registry
        .sign_on_push
        .then(|| authority.release_key().public_key())
        .into_iter()
        .chain(configured.iter().copied())
        .collect();
    let roots = crate::fleet::roots::TrustRoots::open(
        chain,
        &config.data_dir,
        Arc::clone(&authority),
        &first_release,
        Arc::clone(&secrets),
    )?;
    let registry = registry
        .trusting(configured)
        .signing_on_push(config.registry.sign_on_push)
        .with_bundle_keys(config.registry.load_bundle_keys().map_err(|(key, problem)| {
            ServeError::Config(crate::config::ConfigError::Key { key, problem })
        })?);
    registry.follow_root_release(&roots.release()?.0);
    let (outgoing_tx, outgoing_rx) = tokio::sync::mpsc::channel(4096);
    let republish: link::Republish = {
        let (desired, authority) = (desired.clone(), authority.clone());
        Arc::new(move || {
            let (all, roots) = match (desired.all(), desired.roots()) {
                (Ok(all), Ok(roots)) => (all, roots),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "the desired states cannot be read: none republished");
                    return Vec::new();
                }
            };
            all.into_iter()
                .filter_map(|(device, record)| {
                    desired.seal_with(&authority, &device, &record, roots.clone()).ok()
                })
                .collect()
        })
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let link_task = tokio::spawn(link::run(
        settings,
        ingest.clone(),
        metrics.clone(),
        shutdown_rx.clone(),
        outgoing_rx,
        republish,
    ));

    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .map_err(|source| ServeError::Bind { addr: config.api.listen, source })?;
    let addr = listener.local_addr().map_err(ServeError::Server)?;
    tracing::info!(addr = %addr, broker = config.advertised_broker_url(), embedded_broker = config.broker.url.is_none(), data_dir = %config.data_dir.display(), "listening");
    // Port 0 picks a free port: devices must be told the real one.
    let mut config = config;
    let tls = if config.api_tls() { Some(api_tls(&config, &authority, addr)?) } else { None };
    let scheme = if tls.is_some() { "https" } else { "http" };
    if config.api.advertised_url.is_none() {
        config.api.advertised_url = Some(format!("{scheme}://{addr}"));
    }
    let api_ca_pem = match &config.api.ca_file {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|source| ServeError::Read { path: path.clone(), source })?
        }
        None => authority.ca_pem().to_owned(),
    };
    let alerts = Arc::new(
        crate::ops::alerts::AlertEngine::new(
            &backing,
            config.alerts.clone(),
            config.fleet.clone(),
            format!("{}/api/v1/alerts", config.api.advertised_url.as_deref().unwrap_or_default()),
            metrics.clone(),
        )
        .map_err(|e| match e {
            crate::ops::alerts::AlertsError::Store(s) => ServeError::Store(s),
            other => ServeError::Config(crate::config::ConfigError::Key {
                key: "alerts.ca_file".into(),
                problem: other.to_string(),
            }),
        })?,
    );
    // Every engine reads the same clock.
    let clock = crate::base::clock::Clock::system();
    let alerts_task =
        tokio::spawn(crate::ops::alerts::run(Arc::clone(&alerts), clock.clone(), shutdown_rx.clone()));
    let pruned_devices = devices.clone();
    let retention_task = tokio::spawn(crate::monitoring::retention::run(
        backing.clone(),
        config.retention.clone(),
        Arc::new(move |cutoff_ms| pruned_devices.prune_envelopes(cutoff_ms)),
        clock.clone(),
        shutdown_rx.clone(),
    ));
    let deployer = crate::ops::deploy::Deployer::new(
        registry.clone(),
        devices.clone(),
        desired.clone(),
        Arc::clone(&authority),
        outgoing_tx.clone(),
        config.watchdog,
    );
    let retraining = Arc::new(crate::ops::retraining::Retraining::new(
        &backing,
        config.retraining.clone(),
        config.data_dir.clone(),
        deployer.clone(),
        Arc::clone(&authority),
        Arc::clone(&audit),
        metrics.clone(),
        clock.clone(),
    )?);
    let rollouts = Arc::new(crate::ops::rollout::Rollouts::new(
        &backing,
        deployer.clone(),
        config.fleet.clone(),
        metrics.clone(),
        clock,
    )?);
    let state = Arc::new(AppState {
        rollouts: Arc::clone(&rollouts),
        retraining: Arc::clone(&retraining),
        alerts: Arc::clone(&alerts),
        deployer,
        config: config.clone(),
        devices,
        authority,
        ingest,
        metrics,
        auth,
        audit,
        audit_sampler: Default::default(),
        failed_auth: Default::default(),
        registry,
        roots,
        desired,
        outgoing: outgoing_tx,
        broker_ca_pem,
        broker_front,
        api_ca_pem: tls.as_ref().map(|_| api_ca_pem),
        uploads: crate::http::spool::Uploads::new(&config.data_dir)
            .map_err(|source| ServeError::Write { path: config.data_dir.join("uploads"), source })?,
        sessions,
        store: backing.clone(),
    });
    let retraining_task =
        tokio::spawn(crate::ops::retraining::run_triggers(retraining, alerts, shutdown_rx.clone()));
    let rollout_task = tokio::spawn(crate::ops::rollout::run(rollouts, shutdown_rx.clone()));
    let refresh = backing.fence(crate::ops::deploy::REFRESH);
    let refresh_task = tokio::spawn(crate::ops::deploy::run_refresh(
        state.deployer.fenced(refresh.clone()),
        refresh,
        shutdown_rx.clone(),
    ));
    // Every engine has asked for its fence by now: the keeper claims their leases.
    let keeper_task = match (&backing, &pg_url) {
        (Backing::Postgres(shared), Some(url)) => Some(tokio::spawn(
            crate::base::pg::keeper::LeaseKeeper::new(
                url,
                &replica,
                env!("CARGO_PKG_VERSION"),
                crate::base::pg::latest_schema(),
                shared.fences(),
                std::time::Duration::from_secs(config.store.lease_ttl_secs),
            )
            .run(shutdown_rx.clone()),
        )),
        _ => None,
    };
    if tls.is_some() {
        tracing::info!(%addr, "API speaks HTTPS");
    }
    let server_task = crate::http::serve::spawn(listener, state, tls, shutdown_rx.clone());

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = link_task.await;
    let _ = alerts_task.await;
    let _ = refresh_task.await;
    let _ = retraining_task.await;
    let _ = rollout_task.await;
    let _ = retention_task.await;
    if let Some(keeper) = keeper_task {
        // Releases the leases it holds, so another replica takes over at once.
        let _ = keeper.await;
    }
    let served = server_task.await;
    backing.flush()?;
    tracing::info!("state flushed; stopped");
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServeError::Server(e)),
        Err(e) => Err(ServeError::Server(std::io::Error::other(e))),
    }
}

/// The API's TLS settings: the operator's certificate, or one from the coordinator's CA.
fn api_tls(
    config: &Config,
    authority: &Authority,
    addr: SocketAddr,
) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let (cert, key) = match (&config.api.cert_file, &config.api.key_file) {
        (Some(cert), Some(key)) => {
            let read = |path: &std::path::PathBuf| {
                std::fs::read_to_string(path)
                    .map_err(|source| ServeError::Read { path: path.clone(), source })
            };
            (read(cert)?, read(key)?)
        }
        _ => {
            let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            if !addr.ip().is_unspecified() && !addr.ip().is_loopback() {
                names.push(addr.ip().to_string());
            }
            names.extend(config.api.tls_names.iter().cloned());
            names.dedup();
            authority.issue_server(&names, 365)?
        }
    };
    // Devices may present their client certificate (from the fleet CA): the artifact endpoint
    // knows them by it.
    Ok(outpost_shared::tls::server_config(
        cert.as_bytes(),
        key.as_bytes(),
        Some(authority.ca_pem().as_bytes()),
    )?)
}

/// The embedded broker's refusals, audited as `broker.refused` (sampled like the API's
/// denials; every one is counted in `outpost_coordinator_broker_refused_total`).
fn audit_broker_refusals(audit: Arc<AuditLog>, metrics: Metrics) -> crate::fleet::broker::front::OnRefusal {
    let sampler = Arc::new(crate::http::denials::AuditSampler::default());
    Arc::new(move |refused: crate::fleet::broker::front::Refused| {
        const ACTION: &str = "broker.refused";
        if !sampler.admit(ACTION) {
            metrics.audit_suppressed.with_label_values(&[ACTION]).inc();
            return;
        }
        let (audit, metrics) = (Arc::clone(&audit), metrics.clone());
        tokio::spawn(async move {
            let actor = refused.identity.as_deref().unwrap_or("unknown");
            let detail = format!("{} (from {})", refused.detail, refused.peer);
            audit
                .append_or_count(&metrics, actor, "device", ACTION, refused.reason, "refused", &detail)
                .await;
        });
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers the process can still be killed; wait forever.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
