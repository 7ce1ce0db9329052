-- pstd schema, version 1.
--
-- Conventions
--   * Every row that matters to an auditor is immutable once written: guard
--     triggers refuse UPDATE/DELETE/TRUNCATE except the one state change each
--     table allows (key and record-key retirement).
--   * Advisory locks use the two-key form pg_advisory_xact_lock(1886614628, n),
--     1886614628 = 0x70737464 = 'pstd', so they cannot collide with another
--     application's single-key locks (goose's migration lock is single-key):
--       n = 1  key rotation          (db.Store.WithRotationLock, Go)
--       n = 2  audit chain append    (audit_log_chain trigger, below)
--       n = 3  commitment publication (db.Store.PublishCommitment, Go)
--   * VOPRF key ids are uint32 (1 .. 2^32-1); PostgreSQL integer is signed
--     32-bit, so key ids are bigint with a range CHECK.
--   * Nothing here stores a token nonce, a plaintext key or anything from
--     issuance.

-- +goose Up

-- Key ids come from this sequence and are never reused: nextval is not
-- rolled back, so an id handed to the HSM for sealing (the id is part of the
-- seal's AAD) is never handed out again even if storing the key fails.
CREATE SEQUENCE key_id_seq AS bigint MINVALUE 1 MAXVALUE 4294967295 NO CYCLE;

-- One row per VOPRF key (a "key epoch"). State is derived from time, not
-- stored, so it can never disagree with the timestamps the signer and the
-- browser act on:
--   pending  now() <  not_before              published ahead, does not sign yet
--   active   not_before <= now() < expiry     may sign (the signer picks one) and redeems
--   expired  expiry <= now(), not retired     past its published expiry: redeems nothing
--   retired  retired_at IS NOT NULL           removed from the key set (terminal)
-- Retirement is the only update allowed; see key_epochs_guard.
CREATE TABLE key_epochs (
    key_id        bigint      PRIMARY KEY
                              CONSTRAINT key_epochs_key_id_uint32 CHECK (key_id BETWEEN 1 AND 4294967295),
    protocol      text        NOT NULL DEFAULT 'PrivateStateTokenV1VOPRF'
                              CONSTRAINT key_epochs_protocol_known CHECK (protocol IN ('PrivateStateTokenV1VOPRF')),
    -- The scalar sealed by the HSM's key-encryption key (AES-256-GCM: header,
    -- IV, 48-byte ciphertext, tag). A P-384 scalar is 48 bytes, so a short
    -- value is almost certainly plaintext stored by mistake: refuse it.
    sealed_secret bytea       NOT NULL
                              CONSTRAINT key_epochs_sealed_secret_not_plaintext CHECK (octet_length(sealed_secret) >= 60),
    kek_label     text        NOT NULL DEFAULT '',
    -- u32 key id || 0x04 || X || Y (P-384), exactly as published.
    public_key    bytea       NOT NULL
                              CONSTRAINT key_epochs_public_key_blob CHECK (
                                  octet_length(public_key) = 101
                                  AND substring(public_key FROM 1 FOR 4) = decode(lpad(to_hex(key_id), 8, '0'), 'hex')
                                  AND get_byte(public_key, 4) = 4),
    imported      boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    not_before    timestamptz NOT NULL,
    expiry        timestamptz NOT NULL,
    retired_at    timestamptz,
    CONSTRAINT key_epochs_expiry_after_not_before CHECK (expiry > not_before)
);

-- Redemption-record signing keys (ES256, private half non-extractable in the
-- HSM; only the SubjectPublicKeyInfo is stored). At most one signs at a time.
CREATE TABLE rr_keys (
    id         text        PRIMARY KEY
                           CONSTRAINT rr_keys_id_format CHECK (id ~ '^rr-[1-9][0-9]{0,9}$'),
    public_key bytea       NOT NULL
                           CONSTRAINT rr_keys_public_key_length CHECK (octet_length(public_key) BETWEEN 32 AND 2048),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Retired keys stay in the JWKS until not_after (every record they signed
    -- has expired by then).
    not_after  timestamptz,
    retired_at timestamptz,
    CONSTRAINT rr_keys_not_after_only_when_retired CHECK (not_after IS NULL OR retired_at IS NOT NULL)
);
CREATE UNIQUE INDEX rr_keys_one_signing ON rr_keys ((true)) WHERE retired_at IS NULL;

-- Published key commitments. id is the commitment "id" browsers see; it
-- grows by exactly one each time the published key set changes (allocated
-- as max+1 under advisory lock 3, not from a sequence, so a rolled-back
-- publication leaves no gap and the body can embed its own id). body is the
-- exact published bytes (text, not jsonb: jsonb would reorder keys).
CREATE TABLE commitments (
    id         bigint      PRIMARY KEY
                           CONSTRAINT commitments_id_uint32 CHECK (id BETWEEN 1 AND 4294967295),
    created_at timestamptz NOT NULL DEFAULT now(),
    key_ids    bigint[]    NOT NULL
                           CONSTRAINT commitments_key_ids_shape CHECK (
                               cardinality(key_ids) BETWEEN 1 AND 6
                               AND array_position(key_ids, NULL) IS NULL),
    body       text        NOT NULL
                           CONSTRAINT commitments_body_json_object CHECK (jsonb_typeof(body::jsonb) = 'object')
);

-- The double-spend guard. One row per redeemed token: the key id and a
-- SHA-256 of the token's nonce (never the nonce itself), the redemption
-- record's id (jti), the redeeming origin and the time. Nothing here can be
-- joined to an issuance: pstd stores nothing at issuance.
--
-- Partitioned by key id, one partition per key epoch (created by a trigger in
-- the same transaction as the key_epochs row), so that once a key has expired
-- its guard rows go with a cheap DROP of its partition. A redemption for a key
-- without a partition fails (no partition for the row): fail closed.
--
-- There is deliberately no foreign key to key_epochs: the partition already
-- implies the key, and an FK would take a KEY SHARE lock on one hot
-- key_epochs row for every redemption.
CREATE TABLE redemptions (
    key_id           bigint      NOT NULL,
    nonce_hash       bytea       NOT NULL
                                 CONSTRAINT redemptions_nonce_hash_sha256 CHECK (octet_length(nonce_hash) = 32),
    redeemed_at      timestamptz NOT NULL DEFAULT now(),
    record_id        text        NOT NULL
                                 CONSTRAINT redemptions_record_id_length CHECK (octet_length(record_id) BETWEEN 1 AND 128),
    redeeming_origin text
                                 CONSTRAINT redemptions_origin_length CHECK (octet_length(redeeming_origin) BETWEEN 1 AND 2048),
    PRIMARY KEY (key_id, nonce_hash)
) PARTITION BY LIST (key_id);

-- Append-only, hash-chained audit log. Writers insert (actor, action,
-- subject, details) only; the audit_log_chain trigger assigns seq, at,
-- prev_hash and hash under advisory lock 2, so the chain is linear across
-- replicas and no client can forge a hash. See audit_log_hash for the
-- canonical encoding, which db.VerifyAuditChain recomputes independently in Go.
CREATE TABLE audit_log (
    seq       bigint      PRIMARY KEY CONSTRAINT audit_log_seq_positive CHECK (seq >= 1),
    at        timestamptz NOT NULL,
    actor     text        NOT NULL CONSTRAINT audit_log_actor_present CHECK (actor <> ''),
    action    text        NOT NULL CONSTRAINT audit_log_action_format CHECK (action ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$'),
    subject   text        NOT NULL DEFAULT '',
    details   jsonb       NOT NULL DEFAULT '{}' CONSTRAINT audit_log_details_object CHECK (jsonb_typeof(details) = 'object'),
    prev_hash bytea       NOT NULL CONSTRAINT audit_log_prev_hash_sha256 CHECK (octet_length(prev_hash) = 32),
    hash      bytea       NOT NULL CONSTRAINT audit_log_hash_sha256 CHECK (octet_length(hash) = 32)
);

-- Canonical bytes of an audit row, hashed with SHA-256:
--   "pstd-audit-v1" || prev_hash (32) || int64be(seq) || int64be(at, Unix microseconds)
--   || for actor, action, subject, details::text: uint32be(byte length) || UTF-8 bytes
-- details::text is jsonb's normalised text output, so it is the same for
-- every reader of the stored value.
-- +goose StatementBegin
CREATE FUNCTION audit_log_hash(prev_hash bytea, seq bigint, at timestamptz,
                               actor text, action text, subject text, details jsonb)
RETURNS bytea LANGUAGE sql STABLE STRICT AS $$
    SELECT sha256(
        convert_to('pstd-audit-v1', 'UTF8')
        || prev_hash
        || int8send(seq)
        || int8send((extract(epoch FROM at) * 1000000)::bigint)
        || int4send(octet_length(convert_to(actor, 'UTF8')))          || convert_to(actor, 'UTF8')
        || int4send(octet_length(convert_to(action, 'UTF8')))         || convert_to(action, 'UTF8')
        || int4send(octet_length(convert_to(subject, 'UTF8')))        || convert_to(subject, 'UTF8')
        || int4send(octet_length(convert_to(details::text, 'UTF8')))  || convert_to(details::text, 'UTF8'))
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION audit_log_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_seq  bigint;
    last_hash bytea;
BEGIN
    -- Under REPEATABLE READ or SERIALIZABLE the snapshot predates the lock,
    -- so the last row could be missed; refuse rather than fork the chain.
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
    NEW.at := date_trunc('microseconds', clock_timestamp());
    NEW.subject := coalesce(NEW.subject, '');
    NEW.details := coalesce(NEW.details, '{}'::jsonb);
    NEW.prev_hash := last_hash;
    NEW.hash := audit_log_hash(NEW.prev_hash, NEW.seq, NEW.at, NEW.actor, NEW.action, NEW.subject, NEW.details);
    RETURN NEW;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_chain();

-- Refuses any change: UPDATE, DELETE (row triggers) and TRUNCATE (statement trigger).
-- +goose StatementBegin
CREATE FUNCTION pstd_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: % refused: rows are immutable', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
-- +goose StatementEnd

CREATE TRIGGER audit_log_immutable BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION pstd_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION pstd_refuse_change();

CREATE TRIGGER commitments_immutable BEFORE UPDATE OR DELETE ON commitments
    FOR EACH ROW EXECUTE FUNCTION pstd_refuse_change();
CREATE TRIGGER commitments_no_truncate BEFORE TRUNCATE ON commitments
    FOR EACH STATEMENT EXECUTE FUNCTION pstd_refuse_change();

-- Redemption rows are never changed or deleted one by one; they leave only
-- with their key's whole partition, after the key expired.
CREATE TRIGGER redemptions_immutable BEFORE UPDATE OR DELETE ON redemptions
    FOR EACH ROW EXECUTE FUNCTION pstd_refuse_change();

-- key_epochs: rows are never deleted (ids are never reused, and the audit
-- log refers to them); the only update is retirement, once.
-- +goose StatementBegin
CREATE FUNCTION key_epochs_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'key_epochs: % refused: key epochs are never removed', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.retired_at IS NOT NULL OR NEW.retired_at IS NULL
       OR (to_jsonb(NEW) - 'retired_at') IS DISTINCT FROM (to_jsonb(OLD) - 'retired_at') THEN
        RAISE EXCEPTION 'key_epochs: only retirement (setting retired_at once) is allowed'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER key_epochs_guard BEFORE UPDATE OR DELETE ON key_epochs
    FOR EACH ROW EXECUTE FUNCTION key_epochs_guard();
CREATE TRIGGER key_epochs_no_truncate BEFORE TRUNCATE ON key_epochs
    FOR EACH STATEMENT EXECUTE FUNCTION pstd_refuse_change();

-- rr_keys: never deleted; the only update is retirement (retired_at and
-- not_after, once).
-- +goose StatementBegin
CREATE FUNCTION rr_keys_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'rr_keys: % refused: record keys are never removed', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.retired_at IS NOT NULL OR NEW.retired_at IS NULL
       OR (to_jsonb(NEW) - 'retired_at' - 'not_after') IS DISTINCT FROM (to_jsonb(OLD) - 'retired_at' - 'not_after') THEN
        RAISE EXCEPTION 'rr_keys: only retirement (setting retired_at once) is allowed'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER rr_keys_guard BEFORE UPDATE OR DELETE ON rr_keys
    FOR EACH ROW EXECUTE FUNCTION rr_keys_guard();
CREATE TRIGGER rr_keys_no_truncate BEFORE TRUNCATE ON rr_keys
    FOR EACH STATEMENT EXECUTE FUNCTION pstd_refuse_change();

-- The redemptions partition of a new key epoch, created in the inserting
-- transaction. It is made as a plain table and then attached: ATTACH
-- PARTITION needs only SHARE UPDATE EXCLUSIVE on redemptions, so redemptions
-- under the other keys keep flowing while a rotation transaction is open
-- (CREATE TABLE ... PARTITION OF would hold ACCESS EXCLUSIVE until commit).
-- SECURITY DEFINER: attaching needs ownership of redemptions, which the
-- service's role should not have; the partition belongs to the schema owner.
-- +goose StatementBegin
CREATE FUNCTION key_epochs_create_partition() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    part text := 'redemptions_k' || NEW.key_id;
BEGIN
    EXECUTE format('CREATE TABLE %I.%I (LIKE %I.redemptions INCLUDING ALL)', TG_TABLE_SCHEMA, part, TG_TABLE_SCHEMA);
    EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I CHECK (key_id = %s)', TG_TABLE_SCHEMA, part, part || '_key_id', NEW.key_id);
    EXECUTE format('ALTER TABLE %I.redemptions ATTACH PARTITION %I.%I FOR VALUES IN (%s)', TG_TABLE_SCHEMA, TG_TABLE_SCHEMA, part, NEW.key_id);
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER key_epochs_create_partition AFTER INSERT ON key_epochs
    FOR EACH ROW EXECUTE FUNCTION key_epochs_create_partition();

-- Drops the redemptions partition of a key that is retired and past its
-- published expiry (no token of it can redeem any more), and returns how many
-- rows it held, or NULL if there was no partition (already dropped). The
-- checks live here, not only in Go, so that no caller can drop the guard of a
-- key whose tokens still redeem. Without the partition a late redemption
-- under that key fails (no partition for the row): fail closed, never a
-- double spend. SECURITY DEFINER for the same reason as above.
-- +goose StatementBegin
CREATE FUNCTION redemptions_drop_partition(p_key_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    k     key_epochs%ROWTYPE;
    part  regclass;
    nrows bigint;
BEGIN
    SELECT * INTO k FROM key_epochs WHERE key_id = p_key_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'key % does not exist', p_key_id USING ERRCODE = 'no_data_found';
    END IF;
    IF k.retired_at IS NULL OR k.expiry > now() THEN
        RAISE EXCEPTION 'key %: redemptions are kept until the key is retired and past its expiry', p_key_id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT c.oid INTO part
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'redemptions'::regclass AND c.relname = 'redemptions_k' || p_key_id;
    IF part IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT count(*) FROM %s', part) INTO nrows;
    EXECUTE format('DROP TABLE %s', part);
    RETURN nrows;
END
$$;
-- +goose StatementEnd

-- For operators in psql: each key epoch's derived state.
CREATE VIEW key_epoch_states AS
SELECT k.key_id,
       CASE
           WHEN k.retired_at IS NOT NULL THEN 'retired'
           WHEN now() < k.not_before THEN 'pending'
           WHEN now() < k.expiry THEN 'active'
           ELSE 'expired'
       END AS state,
       k.created_at, k.not_before, k.expiry, k.retired_at, k.imported, k.kek_label,
       to_regclass(format('%I.%I', n.nspname, 'redemptions_k' || k.key_id)) IS NOT NULL AS has_redemptions
FROM key_epochs k
JOIN pg_class c ON c.oid = 'key_epochs'::regclass
JOIN pg_namespace n ON n.oid = c.relnamespace;

-- +goose Down
-- There is no down migration: it would destroy the audit log and the
-- double-spend guard. Restore from a backup instead.
-- +goose StatementBegin
DO $$
BEGIN
    RAISE EXCEPTION 'pstd migration 1 cannot be reverted: it holds the audit log and the double-spend guard; restore from a backup';
END
$$;
-- +goose StatementEnd
