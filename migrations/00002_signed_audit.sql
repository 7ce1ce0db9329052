-- pstd schema, version 2: signed audit events, signed checkpoints and the
-- redemption high-water mark. See docs/AUDIT.md and package auditlog.
--
--   * audit_log rows of version 2 carry the writer's canonical bytes (the
--     RFC 8785 JSON of the event), the audit key that signed them and the
--     signature. The trigger derives the readable columns from the canonical
--     bytes, so the two cannot disagree when written, and chains the row:
--       hash = SHA-256("pstd-audit-v2" || prev_hash || int64be(seq)
--                      || uint32be(len) || canonical || uint32be(len) || sig)
--     Rows from migration 1 stay version 1 and must precede every signed row.
--   * audit_checkpoints holds signed statements of the chain's head; the
--     newest is also kept in the HSM, out of reach of a database rollback.
--   * redemption_hwm only grows (nextval is never rolled back, and a restored
--     backup brings back its old, lower value): each redemption draws from
--     it, and checkpoints record it.
--   * Advisory lock n = 5 serialises checkpoint writers (db.Store.WithCheckpointLock).

-- +goose Up

ALTER TABLE audit_log
    ADD COLUMN version   smallint NOT NULL DEFAULT 1 CONSTRAINT audit_log_version_known CHECK (version IN (1, 2)),
    ADD COLUMN event_id  text     CONSTRAINT audit_log_event_id_hex CHECK (event_id ~ '^[0-9a-f]{32}$'),
    ADD COLUMN canonical text,
    ADD COLUMN key_id    text,
    ADD COLUMN sig       bytea,
    ADD CONSTRAINT audit_log_v2_signed CHECK (version = 1 OR (event_id IS NOT NULL AND canonical IS NOT NULL AND key_id IS NOT NULL AND sig IS NOT NULL));

CREATE UNIQUE INDEX audit_log_event_id ON audit_log (event_id) WHERE event_id IS NOT NULL;

-- +goose StatementBegin
CREATE FUNCTION audit_log_hash_v2(prev_hash bytea, seq bigint, canonical text, sig bytea)
RETURNS bytea LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT sha256(
        convert_to('pstd-audit-v2', 'UTF8')
        || prev_hash
        || int8send(seq)
        || int4send(octet_length(convert_to(canonical, 'UTF8'))) || convert_to(canonical, 'UTF8')
        || int4send(octet_length(sig)) || sig)
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION audit_log_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_seq  bigint;
    last_hash bytea;
    ev        jsonb;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'audit_log: append only under READ COMMITTED (not %)', current_setting('transaction_isolation')
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    PERFORM pg_advisory_xact_lock(1886614628, 2);
    SELECT a.seq, a.hash INTO last_seq, last_hash FROM audit_log a ORDER BY a.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        last_seq := 0;
        last_hash := decode(repeat('00', 32), 'hex');
    END IF;
    NEW.seq := last_seq + 1;
    NEW.prev_hash := last_hash;
    IF NEW.version = 2 THEN
        ev := NEW.canonical::jsonb;
        IF (ev->>'v')::int IS DISTINCT FROM 2 OR ev->>'id' IS DISTINCT FROM NEW.event_id OR ev->>'key' IS DISTINCT FROM NEW.key_id THEN
            RAISE EXCEPTION 'audit_log: canonical bytes do not match the row' USING ERRCODE = 'check_violation';
        END IF;
        NEW.at := (ev->>'at')::timestamptz;
        NEW.actor := ev->>'actor';
        NEW.action := ev->>'action';
        NEW.subject := ev->>'subject';
        NEW.details := ev->'details';
        NEW.hash := audit_log_hash_v2(NEW.prev_hash, NEW.seq, NEW.canonical, NEW.sig);
    ELSE
        -- Unsigned rows are migration 1's; nothing writes them any more.
        RAISE EXCEPTION 'audit_log: unsigned (version 1) rows are no longer accepted'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd

CREATE TABLE audit_checkpoints (
    n      bigint PRIMARY KEY CONSTRAINT audit_checkpoints_n_positive CHECK (n >= 1),
    body   text   NOT NULL,  -- canonical (RFC 8785) JSON, as signed
    key_id text   NOT NULL,
    sig    bytea  NOT NULL,
    audit_seq bigint NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER audit_checkpoints_immutable BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION pstd_refuse_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION pstd_refuse_change();

CREATE SEQUENCE redemption_hwm AS bigint MINVALUE 1 NO CYCLE;

-- +goose Down
-- +goose StatementBegin
DO $$
BEGIN
    RAISE EXCEPTION 'pstd migration 2 cannot be reverted: it holds signed audit evidence; restore from a backup';
END
$$;
-- +goose StatementEnd
