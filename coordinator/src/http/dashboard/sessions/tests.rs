//! The sessions repository on both backends.

use super::*;
use crate::base::pg::store::testing::{Backing, TestDatabase};

fn sled() -> (Sessions, Backing) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (Sessions::open(&store).unwrap(), Backing::Sled(dir, store))
}

fn postgres() -> (Sessions, Backing) {
    let db = TestDatabase::new();
    (Sessions::open_postgres(&db.store()), Backing::Postgres(db))
}

/// A fresh repository on one backend.
type Open = fn() -> (Sessions, Backing);

const HOUR: u64 = 3_600_000;

crate::base::pg::store::testing::on_both_backends!(
    sled, postgres;
    a_session_is_found_by_its_id_until_it_expires_or_closes,
    the_store_holds_neither_the_session_id_nor_the_token,
    expired_sessions_are_swept_at_the_next_sign_in,
    the_sessions_closest_to_expiry_make_room_beyond_the_cap,
);

fn a_session_is_found_by_its_id_until_it_expires_or_closes(open: Open) {
    let (sessions, _backing) = open();
    let (id, csrf) = sessions.start("token-hash", 1_000, HOUR).unwrap();
    assert_eq!((id.len(), csrf.len()), (64, 64));
    assert_ne!(id, csrf);
    let session = sessions.get(&id, 2_000).unwrap().unwrap();
    assert_eq!(
        session,
        Session { token_hash: "token-hash".into(), csrf, created_at_ms: 1_000, expires_at_ms: 1_000 + HOUR }
    );
    assert_eq!(sessions.get(&id, 1_000 + HOUR - 1).unwrap().map(|s| s.token_hash), Some("token-hash".into()));
    assert_eq!(sessions.get(&id, 1_000 + HOUR).unwrap(), None, "expired at its expiry");
    assert_eq!(sessions.get("not-a-session", 2_000).unwrap(), None);
    let (other, _) = sessions.start("token-hash", 1_000, HOUR).unwrap();
    assert_ne!(other, id, "each sign-in its own session");
    sessions.close(&id).unwrap();
    assert_eq!(sessions.get(&id, 2_000).unwrap(), None);
    assert!(sessions.get(&other, 2_000).unwrap().is_some(), "closing one leaves the other");
    sessions.close(&id).unwrap();
}

fn the_store_holds_neither_the_session_id_nor_the_token(open: Open) {
    let (sessions, backing) = open();
    let (id, _) = sessions.start(&sha256_hex(b"opk_secret"), 1_000, HOUR).unwrap();
    let everything = match &backing {
        Backing::Sled(_, store) => {
            let tree = store.tree("dashboard_sessions").unwrap();
            tree.iter()
                .map(|item| {
                    let (k, v) = item.unwrap();
                    format!("{}{}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v))
                })
                .collect::<String>()
        }
        Backing::Postgres(db) => {
            let rows =
                db.store().keyed_texts("SELECT id_hash, token_hash FROM outpost_dashboard_sessions", &[]);
            rows.unwrap().into_iter().map(|(a, b)| a + &b).collect()
        }
    };
    assert!(everything.contains(&sha256_hex(id.as_bytes())), "keyed by the id's hash: {everything}");
    assert!(!everything.contains(&id), "the cookie's value is not stored");
    assert!(!everything.contains("opk_secret"));
}

fn expired_sessions_are_swept_at_the_next_sign_in(open: Open) {
    let (sessions, _backing) = open();
    for _ in 0..3 {
        sessions.start("old", 1_000, HOUR).unwrap();
    }
    let (live, _) = sessions.start("live", 1_000, 3 * HOUR).unwrap();
    assert_eq!(sessions.len().unwrap(), 4);
    sessions.start("new", 1_000 + 2 * HOUR, HOUR).unwrap();
    assert_eq!(sessions.len().unwrap(), 2, "the three expired ones are gone");
    assert!(sessions.get(&live, 1_000 + 2 * HOUR).unwrap().is_some());
}

fn the_sessions_closest_to_expiry_make_room_beyond_the_cap(open: Open) {
    let (sessions, backing) = open();
    // The cap is 10,000: fill it directly rather than through 10,000 sign-ins.
    let fill = |n: u64| {
        let session = |i: u64| Session {
            token_hash: "t".into(),
            csrf: "c".into(),
            created_at_ms: 0,
            expires_at_ms: HOUR + i,
        };
        match &backing {
            Backing::Sled(_, store) => {
                let tree = store.tree("dashboard_sessions").unwrap();
                for i in 0..n {
                    tree.insert(format!("k{i:05}"), serde_json::to_vec(&session(i)).unwrap()).unwrap();
                }
            }
            Backing::Postgres(db) => {
                let store = db.store();
                for i in 0..n {
                    pg::start(&store, &format!("k{i:05}"), &session(i), 0).unwrap();
                }
            }
        }
    };
    fill(MAX_SESSIONS as u64);
    assert_eq!(sessions.len().unwrap(), MAX_SESSIONS);
    let (id, _) = sessions.start("newest", 0, 2 * HOUR).unwrap();
    assert_eq!(sessions.len().unwrap(), MAX_SESSIONS, "one made room");
    assert!(sessions.get(&id, 1).unwrap().is_some());
    let expiries: Vec<u64> = match &backing {
        Backing::Sled(_, store) => store
            .tree("dashboard_sessions")
            .unwrap()
            .iter()
            .map(|i| serde_json::from_slice::<Session>(&i.unwrap().1).unwrap().expires_at_ms)
            .collect(),
        Backing::Postgres(db) => db
            .store()
            .keyed_texts("SELECT id_hash, expires_at_ms::text FROM outpost_dashboard_sessions", &[])
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.parse().unwrap())
            .collect(),
    };
    assert!(!expiries.contains(&HOUR), "the one closest to expiry went");
    assert!(expiries.contains(&(HOUR + 1)));
}

#[test]
fn a_session_started_on_one_replica_is_found_and_closed_on_another() {
    let db = TestDatabase::new();
    let (one, two) = (Sessions::open_postgres(&db.store()), Sessions::open_postgres(&db.store()));
    let (id, csrf) = one.start("hash", 1_000, HOUR).unwrap();
    assert_eq!(two.get(&id, 2_000).unwrap().map(|s| s.csrf), Some(csrf));
    two.close(&id).unwrap();
    assert_eq!(one.get(&id, 2_000).unwrap(), None);
}

#[test]
fn an_unreachable_store_is_an_error_not_a_signed_out_browser() {
    let db = TestDatabase::new();
    let sessions = Sessions::open_postgres(&db.store());
    let (id, _) = sessions.start("hash", 1_000, HOUR).unwrap();
    db.drop_now();
    let e = sessions.get(&id, 2_000).unwrap_err();
    assert!(e.to_string().contains("postgres://"), "{e}");
    assert!(sessions.start("hash", 1_000, HOUR).is_err());
}
