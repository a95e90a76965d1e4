//! The fleet database's schema, versioned: each migration runs once, in order, inside one
//! transaction that holds an advisory lock, so that hosts starting at once neither run a
//! migration twice nor see half of one. A database whose schema is newer than this binary
//! knows is refused (an older callgate must not write to tables it does not understand).
use tokio_postgres::Client;

use super::FleetError;

/// The key of the transaction-level advisory lock migrations hold ("callgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x6361_6c6c_6761_7465;

/// The migrations, oldest first; the schema's version is how many have run. Append only:
/// a released migration is never edited.
pub const MIGRATIONS: &[&str] = &[
    // 1: hosts and their heartbeats; held calls, announced to every host on each change.
    r#"
CREATE TABLE callgate_hosts (
    name text PRIMARY KEY,
    seen_at timestamptz NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE callgate_approvals (
    id text PRIMARY KEY,
    host text NOT NULL,
    state text NOT NULL,
    request jsonb NOT NULL,
    verdict jsonb,
    grant_ms bigint,
    expires_at_ms bigint NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX callgate_approvals_pending ON callgate_approvals (host) WHERE state = 'pending';
CREATE INDEX callgate_approvals_requested ON callgate_approvals (requested_at DESC);
CREATE FUNCTION callgate_approvals_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload text := NEW.host || ' ' || NEW.id || ' ' || NEW.state;
    verdict text;
BEGIN
    -- The verdict rides along when it fits (a payload is at most 8000 bytes): the holding
    -- host then wakes its client without reading the row.
    IF NEW.verdict IS NOT NULL THEN
        verdict := json_build_object('verdict', NEW.verdict, 'grant_ms', NEW.grant_ms)::text;
        IF octet_length(payload) + octet_length(verdict) < 7900 THEN
            payload := payload || ' ' || verdict;
        END IF;
    END IF;
    PERFORM pg_notify('callgate_approvals', payload);
    RETURN NULL;
END
$$;
CREATE TRIGGER callgate_approvals_notify
    AFTER INSERT OR UPDATE OF state ON callgate_approvals
    FOR EACH ROW EXECUTE FUNCTION callgate_approvals_notify();
"#,
    // 2: fleet-wide quotas: one row per key and window, counted by one upsert.
    r#"
CREATE TABLE callgate_quotas (
    key text NOT NULL,
    window_start bigint NOT NULL,
    window_len bigint NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (key, window_start)
);
CREATE INDEX callgate_quotas_end ON callgate_quotas ((window_start + window_len));
"#,
    // 3: grants in force on every host, announced on each change.
    r#"
CREATE TABLE callgate_grants (
    id text PRIMARY KEY,
    grant_json jsonb NOT NULL,
    expires_at_ms bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE FUNCTION callgate_grants_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('callgate_grants', 'revoked ' || OLD.id);
    ELSE
        PERFORM pg_notify('callgate_grants', 'granted ' || NEW.id);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER callgate_grants_notify
    AFTER INSERT OR DELETE ON callgate_grants
    FOR EACH ROW EXECUTE FUNCTION callgate_grants_notify();
"#,
    // 4: every host's records, shipped in the background; (host, seq) makes shipping
    // idempotent (a batch sent twice lands once).
    r#"
CREATE TABLE callgate_records (
    host text NOT NULL,
    seq bigint NOT NULL,
    hash text NOT NULL,
    at_ms bigint NOT NULL,
    record jsonb NOT NULL,
    shipped_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, seq)
);
CREATE INDEX callgate_records_at ON callgate_records (at_ms DESC);
"#,
    // 5: each record's text exactly as its host hashed it (the Merkle leaf: jsonb keeps
    // neither its key order nor its spacing), and every host's signed checkpoints, shipped
    // once the records they cover are in; (host, size) makes shipping idempotent.
    r#"
ALTER TABLE callgate_records ADD COLUMN leaf text;
CREATE TABLE callgate_checkpoints (
    host text NOT NULL,
    size bigint NOT NULL,
    root text NOT NULL,
    note text NOT NULL,
    cosigned text,
    shipped_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, size)
);
"#,
    // 6: a `leaf` may hold a record whose answer is kept beside its JSON
    // (`crate::record::beside`): no table changes, but a callgate older than this would take
    // such a row for an altered one, so it must not read this database.
    r#"
COMMENT ON COLUMN callgate_records.leaf IS
    'the text its host hashed: the record''s JSON, or 0x1E, its JSON without response, 0x0A, the answer';
"#,
];

/// The schema version this binary knows.
pub fn known() -> i32 {
    MIGRATIONS.len() as i32
}

/// Brings the schema up to [`known`]; returns the version found before.
pub async fn migrate(client: &mut Client, host: &str) -> Result<i32, FleetError> {
    let db = |e: tokio_postgres::Error| FleetError::Unavailable(super::describe(&e));
    // Records, approvals and their reasons hold any Unicode text: a database in another
    // encoding refuses some of it (`jsonb`'s `\u00e9` in SQL_ASCII or LATIN1), and one row
    // refused would keep every later record of its host from being shipped.
    let encoding: String = client
        .query_one("SHOW server_encoding", &[])
        .await
        .map_err(db)?
        .get(0);
    if encoding != "UTF8" {
        return Err(FleetError::Config(format!(
            "the database's encoding is {encoding}, not UTF8: records and approvals hold any \
             Unicode text, which PostgreSQL keeps whole only in a UTF8 database (CREATE \
             DATABASE … ENCODING 'UTF8' TEMPLATE template0)"
        )));
    }
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS callgate_schema (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now(),
            applied_by text NOT NULL
        )",
    )
    .await
    .map_err(db)?;
    let found: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM callgate_schema", &[])
        .await
        .map_err(db)?
        .get(0);
    if found > known() {
        return Err(FleetError::SchemaTooNew {
            found,
            known: known(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql).await.map_err(|e| {
            FleetError::Migration(format!("migration {version}: {}", super::describe(&e)))
        })?;
        tx.execute(
            "INSERT INTO callgate_schema (version, applied_by) VALUES ($1, $2)",
            &[&version, &host],
        )
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(found)
}
