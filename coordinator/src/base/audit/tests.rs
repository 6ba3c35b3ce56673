//! The audit log on both backends.

use super::*;
use crate::base::pg::store::testing::TestDatabase;

fn log(dir: &Path) -> AuditLog {
    let store = Store::open(dir).unwrap();
    AuditLog::open(dir, &store).unwrap()
}

#[test]
fn detects_edited_removed_and_truncated_entries() {
    let dir = tempfile::tempdir().unwrap();
    let audit = log(dir.path());
    for i in 0..4 {
        audit.record("alice", "operator", "deploy", &format!("bc@1.{i}.0"), "ok", "").unwrap();
    }
    assert_eq!(audit.verify(), Ok(4));
    let original = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let lines: Vec<&str> = original.lines().collect();

    std::fs::write(dir.path().join("audit.log"), original.replace("bc@1.2.0", "bc@9.9.9")).unwrap();
    assert!(audit.verify().unwrap_err().to_string().contains("entry 3 was edited"));

    let removed: String =
        lines.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, l)| format!("{l}\n")).collect();
    std::fs::write(dir.path().join("audit.log"), removed).unwrap();
    assert!(audit.verify().unwrap_err().to_string().contains("entry 2 is missing"));

    let truncated: String = lines[..3].iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path().join("audit.log"), truncated).unwrap();
    assert!(audit.verify().unwrap_err().to_string().contains("entries were removed"));

    std::fs::write(dir.path().join("audit.log"), &original).unwrap();
    assert_eq!(audit.verify(), Ok(4));
    assert_eq!(audit.tail(2).unwrap()[1].target, "bc@1.3.0");
}

#[test]
fn concurrent_appends_keep_one_chain_and_every_caller_its_entry_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_appends_keep_one_chain_and_every_caller_its_entry(log(dir.path()));
}

#[test]
fn concurrent_appends_keep_one_chain_and_every_caller_its_entry_on_postgres() {
    let db = TestDatabase::new();
    concurrent_appends_keep_one_chain_and_every_caller_its_entry(
        AuditLog::open_postgres(&db.store()).unwrap(),
    );
}

fn concurrent_appends_keep_one_chain_and_every_caller_its_entry(audit: AuditLog) {
    let audit = std::sync::Arc::new(audit);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let audit = std::sync::Arc::clone(&audit);
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| audit.record("t", "operator", "deploy", &format!("{t}-{i}"), "ok", "").unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).map(|e| e.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "every caller got its own, durable entry");
    assert_eq!(audit.verify(), Ok(200));
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let entry = runtime.block_on(audit.append("bob", "admin", "token.create", "ci", "ok", "")).unwrap();
    assert_eq!(entry.seq, 201);
    assert_eq!(audit.verify(), Ok(201));
}

/// Runs `sql` on `db` (a test's way of tampering with the log behind the coordinator's back).
fn tamper(db: &TestDatabase, sql: &str) {
    db.store().execute_batch(sql).unwrap();
}

#[test]
fn detects_edited_removed_and_added_rows_on_postgres() {
    let db = TestDatabase::new();
    let audit = AuditLog::open_postgres(&db.store()).unwrap();
    assert_eq!(audit.verify(), Ok(0), "an empty log verifies");
    assert_eq!(audit.head_seq(), 0);
    for i in 0..4 {
        audit.record("alice", "operator", "deploy", &format!("bc@1.{i}.0"), "ok", "").unwrap();
    }
    assert_eq!(audit.verify(), Ok(4));
    assert_eq!(audit.head_seq(), 4);
    assert_eq!(
        audit.tail(2).unwrap().iter().map(|e| e.target.as_str()).collect::<Vec<_>>(),
        ["bc@1.2.0", "bc@1.3.0"]
    );
    assert!(audit.location().contains("postgres://"), "{}", audit.location());

    tamper(&db, "CREATE TABLE saved AS SELECT * FROM outpost_audit");
    let restore = "DELETE FROM outpost_audit; INSERT INTO outpost_audit SELECT * FROM saved";
    tamper(
        &db,
        "UPDATE outpost_audit SET entry = replace(entry::text, 'bc@1.2.0', 'bc@9.9.9')::json WHERE seq = 3",
    );
    assert!(audit.verify().unwrap_err().to_string().contains("entry 3 was edited"));
    tamper(&db, restore);
    tamper(&db, "DELETE FROM outpost_audit WHERE seq = 2");
    assert!(audit.verify().unwrap_err().to_string().contains("entry 2 is missing"));
    tamper(&db, restore);
    tamper(&db, "DELETE FROM outpost_audit WHERE seq = 4");
    assert!(audit.verify().unwrap_err().to_string().contains("entries were removed"));
    tamper(&db, restore);
    tamper(
        &db,
        "UPDATE outpost_audit_head SET seq = 3, hash = (SELECT entry->>'hash' FROM outpost_audit WHERE seq = 3)",
    );
    assert!(audit.verify().unwrap_err().to_string().contains("entries were added"));
    tamper(
        &db,
        "UPDATE outpost_audit_head SET seq = 4, hash = (SELECT entry->>'hash' FROM outpost_audit WHERE seq = 4)",
    );
    tamper(&db, "UPDATE outpost_audit SET entry = '{\"seq\": 1}' WHERE seq = 1");
    assert!(audit.verify().unwrap_err().to_string().contains("line 1 is not an audit entry"));
    tamper(&db, restore);
    assert_eq!(audit.verify(), Ok(4), "restored, it verifies again");
}

/// Three replicas (each its own pool and writer) appending at once: one chain without gaps,
/// every caller its own entry, and each replica's next append continues the chain the others
/// moved.
#[test]
fn replicas_appending_at_once_keep_one_chain() {
    let db = TestDatabase::new();
    let replicas: Vec<_> =
        (0..3).map(|_| std::sync::Arc::new(AuditLog::open_postgres(&db.store()).unwrap())).collect();
    let threads: Vec<_> = replicas
        .iter()
        .enumerate()
        .flat_map(|(r, audit)| (0..2).map(move |t| (r, t, std::sync::Arc::clone(audit))))
        .map(|(r, t, audit)| {
            std::thread::spawn(move || {
                (0..20)
                    .map(|i| {
                        audit
                            .record("t", "operator", "deploy", &format!("{r}-{t}-{i}"), "ok", "")
                            .unwrap()
                            .seq
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=120).collect::<Vec<_>>());
    for audit in &replicas {
        assert_eq!(audit.verify(), Ok(120));
        assert_eq!(audit.head_seq(), 120);
    }
    assert_eq!(replicas[2].record("bob", "admin", "token.create", "ci", "ok", "").unwrap().seq, 121);
    assert_eq!(replicas[0].tail(1).unwrap()[0].target, "ci");
}

#[test]
fn an_unreachable_database_fails_the_append_and_the_verify_by_name() {
    let db = TestDatabase::new();
    let audit = AuditLog::open_postgres(&db.store()).unwrap();
    audit.record("alice", "operator", "deploy", "bc@1.0.0", "ok", "").unwrap();
    db.drop_now();
    let e = audit.record("alice", "operator", "deploy", "bc@1.1.0", "ok", "").unwrap_err();
    assert!(e.to_string().contains("postgres://"), "{e}");
    assert!(matches!(audit.verify(), Err(Broken::Unreadable(_))), "{:?}", audit.verify());
    assert_eq!(audit.head_seq(), 0, "an unreadable head polls as 0");
}
