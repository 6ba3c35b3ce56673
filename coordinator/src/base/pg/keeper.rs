//! The lease keeper: the task that holds, for one coordinator process, its claims on the
//! engines' leases ([`super::lease`]) and records its heartbeat.
//!
//! Every `ttl / 3` it renews each lease it holds and tries to take each one it does not. An
//! engine's [`Fence`] carries the term while the lease is held and 0 otherwise: the engine acts
//! only while its fence is held ([`Fence::term`] > 0), and every write it makes checks the term
//! in its own transaction ([`Fence::check`]), so a replica that was paused or cut off past its
//! lease cannot write over its successor. Each renewal gives the fence a deadline: `ttl` less a
//! margin after the renewal was sent, by this process's clock, so the fence turns off before the
//! database could let the lease go, whether or not the keeper is still running rounds (a round
//! is bounded by its interval, since a partition may hang a connection). At shutdown the keeper
//! releases what it holds, so a successor need not wait out the TTL.

use std::time::{Duration, Instant};

use super::PgUrl;
use super::lease;
use super::store::Fence;

/// The part of the TTL kept in hand: a holder stops acting this long before its lease could
/// expire at the database.
const MARGIN_DIVISOR: u32 = 5;

/// One replica's claims on the engines' leases.
#[derive(Debug)]
pub struct LeaseKeeper {
    url: PgUrl,
    replica: String,
    version: String,
    schema: i32,
    fences: Vec<Fence>,
    ttl: Duration,
}

/// What one engine's lease is to this replica.
struct Claim {
    fence: Fence,
    /// Whether the fence was held at the last look (to say once that it was lost).
    held: bool,
}

impl LeaseKeeper {
    /// A keeper for replica `replica` (coordinator `version`, schema `schema`) of the engines
    /// behind `fences`, each lease lasting `ttl` unless renewed.
    pub fn new(
        url: &PgUrl,
        replica: &str,
        version: &str,
        schema: i32,
        fences: Vec<Fence>,
        ttl: Duration,
    ) -> LeaseKeeper {
        LeaseKeeper {
            url: url.clone(),
            replica: replica.to_owned(),
            version: version.to_owned(),
            schema,
            fences,
            ttl,
        }
    }

    /// Runs until `shutdown` turns true, then releases every lease held.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut claims: Vec<Claim> =
            self.fences.iter().map(|f| Claim { fence: f.clone(), held: false }).collect();
        let mut client = None;
        let every = self.ttl / 3;
        loop {
            // A round's database work is bounded by the round: behind a partition a connection
            // or a query may hang far longer, and the deadlines below must still be kept.
            if tokio::time::timeout(every, self.round(&mut client, &mut claims)).await.is_err() {
                tracing::warn!("the lease keeper's round timed out: PostgreSQL is slow or unreachable");
                client = None;
            }
            for claim in &mut claims {
                // The fence turns itself off at its deadline; say so once.
                if claim.held && claim.fence.term() == 0 {
                    tracing::error!(
                        engine = claim.fence.engine(),
                        term = claim.fence.last_term(),
                        "the lease could not be renewed in time: this replica stopped running the engine"
                    );
                    claim.fence.release();
                }
                claim.held = claim.fence.term() > 0;
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
        }
        if let Some(c) = &client {
            for claim in &claims {
                let term = claim.fence.term();
                claim.fence.release();
                if term > 0
                    && lease::release(c, claim.fence.engine(), &self.replica, term).await.unwrap_or(false)
                {
                    tracing::info!(engine = claim.fence.engine(), term, "released the lease at shutdown");
                }
            }
        }
    }

    /// One round: (re)connects if need be, records the heartbeat, and keeps every claim.
    async fn round(&self, client: &mut Option<tokio_postgres::Client>, claims: &mut [Claim]) {
        if client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            *client = match self.url.connect(&format!("outpost-leases-{}", self.replica)).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "the lease keeper cannot reach PostgreSQL: engines stop at their deadline");
                    None
                }
            };
        }
        let Some(c) = client.as_ref() else { return };
        if let Err(e) = lease::heartbeat(c, &self.replica, &self.version, self.schema).await {
            tracing::warn!(error = %super::cause(&e), "cannot record this replica's heartbeat");
        }
        for claim in claims {
            self.keep(c, claim).await;
        }
    }

    /// Renews `claim`'s lease if held, else tries to take it.
    async fn keep(&self, client: &tokio_postgres::Client, claim: &mut Claim) {
        let engine = claim.fence.engine();
        let term = claim.fence.term();
        let sent = Instant::now();
        let deadline = sent + self.ttl - self.ttl / MARGIN_DIVISOR;
        if term > 0 {
            match lease::renew(client, engine, &self.replica, term, self.ttl).await {
                Ok(true) => claim.fence.hold(term, deadline),
                Ok(false) => {
                    tracing::warn!(
                        engine,
                        term,
                        "the lease passed to another replica: this replica stops running the engine"
                    );
                    claim.fence.release();
                }
                Err(e) => tracing::warn!(engine, term, error = %super::cause(&e), "cannot renew the lease"),
            }
            return;
        }
        match lease::try_acquire(client, engine, &self.replica, self.ttl).await {
            Ok(Some(term)) => {
                tracing::info!(
                    engine,
                    term,
                    replica = self.replica,
                    "took the lease: this replica runs the engine"
                );
                claim.fence.hold(term, deadline);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(engine, error = %super::cause(&e), "cannot take the lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::pg::store::testing::TestDatabase;

    const TTL: Duration = Duration::from_millis(1500);

    async fn until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(20), "never: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }

    fn keeper(db: &TestDatabase, replica: &str, fence: &Fence) -> LeaseKeeper {
        LeaseKeeper::new(
            &db.url,
            replica,
            "0.0.0",
            crate::base::pg::latest_schema(),
            vec![fence.clone()],
            TTL,
        )
    }

    /// Two replicas: one runs the engine; when it dies (its task killed, nothing released) the
    /// other takes the lease within the TTL and a round, in the next term.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_replica_runs_an_engine_and_the_other_takes_over_when_it_dies() {
        let db = TestDatabase::new();
        let (a, b) = (Fence::new("alerts"), Fence::new("alerts"));
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let first = tokio::spawn(keeper(&db, "a", &a).run(stopped.clone()));
        until("a holds the lease", || a.term() > 0).await;
        let second = tokio::spawn(keeper(&db, "b", &b).run(stopped.clone()));
        tokio::time::sleep(TTL).await;
        assert_eq!((a.term(), b.term()), (1, 0), "one holder at a time");
        first.abort();
        let took = until("b takes the lease", || b.term() > 0).await;
        assert_eq!(b.term(), 2, "a new term");
        assert!(took < TTL + TTL / 3 + Duration::from_millis(500), "took over in {took:?}");
        second.abort();
    }

    /// Replica `a` holding `engine`'s lease, and replica `b` started beside it afterwards.
    struct Pair {
        a: Fence,
        b: Fence,
        stop_a: tokio::sync::watch::Sender<bool>,
        _stop_b: tokio::sync::watch::Sender<bool>,
        first: tokio::task::JoinHandle<()>,
        second: tokio::task::JoinHandle<()>,
    }

    async fn a_leading_b_waiting(db: &TestDatabase, engine: &'static str) -> Pair {
        let (a, b) = (Fence::new(engine), Fence::new(engine));
        let (stop_a, stopped_a) = tokio::sync::watch::channel(false);
        let (stop_b, stopped_b) = tokio::sync::watch::channel(false);
        let first = tokio::spawn(keeper(db, "a", &a).run(stopped_a));
        until("a holds the lease", || a.term() > 0).await;
        let second = tokio::spawn(keeper(db, "b", &b).run(stopped_b));
        Pair { a, b, stop_a, _stop_b: stop_b, first, second }
    }

    /// [`lease::view`] off the runtime, as the API calls it.
    async fn view(db: &TestDatabase) -> lease::ClusterView {
        let store = db.store();
        tokio::task::spawn_blocking(move || lease::view(&store).unwrap()).await.unwrap()
    }

    /// The cluster's view names both replicas and the leader with its term, and after the
    /// leader stops, the lease in the new holder's term.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cluster_view_shows_replicas_the_leader_and_its_term() {
        let db = TestDatabase::new();
        let pair = a_leading_b_waiting(&db, "rollouts").await;
        let started = Instant::now();
        while view(&db).await.replicas.len() < 2 {
            assert!(started.elapsed() < Duration::from_secs(20), "never saw both replicas");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let view_now = view(&db).await;
        assert_eq!(view_now.replicas.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(view_now.replicas.iter().all(|r| (0..5_000).contains(&r.heartbeat_age_ms)), "{view_now:?}");
        assert_eq!(view_now.leases.len(), 1);
        let lease = &view_now.leases[0];
        assert_eq!((lease.engine.as_str(), lease.holder.as_str(), lease.term), ("rollouts", "a", 1));
        assert!(lease.expires_in_ms > 0 && lease.expires_in_ms <= TTL.as_millis() as i64, "{lease:?}");
        pair.stop_a.send(true).unwrap();
        pair.first.await.unwrap();
        until("b takes the lease", || pair.b.term() > 0).await;
        let after = view(&db).await;
        assert_eq!((after.leases[0].holder.as_str(), after.leases[0].term), ("b", 2));
        pair.second.abort();
    }

    /// A replica that shuts down releases its lease: the other takes it at its next round,
    /// without waiting out the TTL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_that_stops_releases_its_lease_at_once() {
        let db = TestDatabase::new();
        let pair = a_leading_b_waiting(&db, "rollouts").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        pair.stop_a.send(true).unwrap();
        pair.first.await.unwrap();
        assert_eq!(pair.a.term(), 0, "a stopped running the engine");
        let took = until("b takes the lease", || pair.b.term() > 0).await;
        assert!(took < TTL / 3 + Duration::from_millis(500), "took over in {took:?}, not after the TTL");
        pair.second.abort();
    }

    /// A holder cut off from PostgreSQL (its database gone, every connection cut) stops running
    /// the engine on its own before its lease could expire at the database.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_that_cannot_renew_stops_before_its_lease_expires() {
        let db = TestDatabase::new();
        let a = Fence::new("alerts");
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let first = tokio::spawn(keeper(&db, "a", &a).run(stopped));
        until("a holds its lease", || a.term() > 0).await;
        let started = Instant::now();
        db.drop_now();
        until("a stops", || a.term() == 0).await;
        assert!(started.elapsed() < TTL, "stopped after {:?}, past the TTL", started.elapsed());
        first.abort();
    }
}
