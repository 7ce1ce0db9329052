-- pstd schema, version 3: counts that outlive partitions, key lifecycle
-- transitions, and the database roles pstd_service and pstd_auditor.
--
-- This file touches only its own tables, views and functions and the roles'
-- privileges, so it applies on top of version 1 alone as well as after any
-- version 2. See docs/AUDIT-COUNTS.md for why counts are buckets and never
-- rows: nothing stored may join an issuance to a redemption.
--
-- Every count row is written in the same transaction as the audit event that
-- carries the same numbers (audit_seq), so the audit chain covers them.
-- (No foreign key to audit_log: it would make audit_log TRUNCATE fail for the
-- key rather than the guard trigger, and take a lock on each audit row read.)

-- +goose Up

-- Issuance per key per time bucket, per replica (each replica counts in
-- memory and appends its closed buckets; a bucket's total is the sum over
-- replicas). One row per count.issuance audit event.
CREATE TABLE issuance_counts (
    audit_seq    bigint      PRIMARY KEY, -- the audit_log seq of the event with the same numbers
    key_id       bigint      NOT NULL
                             CONSTRAINT issuance_counts_key_id_uint32 CHECK (key_id BETWEEN 1 AND 4294967295),
    bucket_start timestamptz NOT NULL,
    bucket_end   timestamptz NOT NULL,
    tokens       bigint      NOT NULL CONSTRAINT issuance_counts_tokens_positive CHECK (tokens >= 0),
    requests     bigint      NOT NULL CONSTRAINT issuance_counts_requests_positive CHECK (requests >= 0),
    replica      text        NOT NULL CONSTRAINT issuance_counts_replica_length CHECK (octet_length(replica) BETWEEN 1 AND 256),
    CONSTRAINT issuance_counts_bucket_order CHECK (bucket_end > bucket_start)
);
CREATE INDEX issuance_counts_key_bucket ON issuance_counts (key_id, bucket_start);

-- Requests the service refused, per reason, per time bucket, per replica.
-- key_id is set only where the refused request named a key the issuer holds
-- (a replayed token); it is NULL otherwise.
CREATE TABLE refusal_counts (
    audit_seq    bigint      PRIMARY KEY, -- the audit_log seq of the event with the same numbers
    reason       text        NOT NULL
                             CONSTRAINT refusal_counts_reason_known CHECK (reason IN ('replay', 'unknown_key', 'malformed', 'invalid_token')),
    key_id       bigint      CONSTRAINT refusal_counts_key_id_uint32 CHECK (key_id BETWEEN 1 AND 4294967295),
    bucket_start timestamptz NOT NULL,
    bucket_end   timestamptz NOT NULL,
    refusals     bigint      NOT NULL CONSTRAINT refusal_counts_refusals_positive CHECK (refusals >= 0),
    replica      text        NOT NULL CONSTRAINT refusal_counts_replica_length CHECK (octet_length(replica) BETWEEN 1 AND 256),
    CONSTRAINT refusal_counts_bucket_order CHECK (bucket_end > bucket_start)
);
CREATE INDEX refusal_counts_bucket ON refusal_counts (bucket_start);

-- Redemptions per key per UTC day per redeeming origin ('' when the client
-- sent none), rolled up from a key's redemptions partition in the
-- transaction that drops it (redemptions_rollup_and_drop), so the counts
-- outlive the double-spend rows.
CREATE TABLE redemption_counts (
    key_id           bigint NOT NULL
                            CONSTRAINT redemption_counts_key_id_uint32 CHECK (key_id BETWEEN 1 AND 4294967295),
    day              date   NOT NULL,
    redeeming_origin text   NOT NULL CONSTRAINT redemption_counts_origin_length CHECK (octet_length(redeeming_origin) <= 2048),
    redemptions      bigint NOT NULL CONSTRAINT redemption_counts_positive CHECK (redemptions > 0),
    PRIMARY KEY (key_id, day, redeeming_origin)
);

-- When the rotation loop saw a key become active (not_before passed) or
-- expire (expiry passed); at most one of each per key.
CREATE TABLE key_transitions (
    key_id      bigint      NOT NULL
                            CONSTRAINT key_transitions_key_id_uint32 CHECK (key_id BETWEEN 1 AND 4294967295),
    transition  text        NOT NULL CONSTRAINT key_transitions_known CHECK (transition IN ('activate', 'expire')),
    at          timestamptz NOT NULL, -- the key's not_before or expiry
    observed_at timestamptz NOT NULL, -- when the rotation loop recorded it
    audit_seq   bigint      NOT NULL, -- the audit_log seq of its event
    PRIMARY KEY (key_id, transition)
);

CREATE TRIGGER issuance_counts_immutable BEFORE UPDATE OR DELETE ON issuance_counts
    FOR EACH ROW EXECUTE FUNCTION pstd_refuse_change();
CREATE TRIGGER issuance_counts_no_truncate BEFORE TRUNCATE ON issuance_counts
    FOR EACH STATEMENT EXECUTE FUNCTION pstd_refuse_change();
CREATE TRIGGER refusal_counts_immutable BEFORE UPDATE OR DELETE ON refusal_counts
    FOR EACH ROW EXECUTE FUNCTION pstd_refuse_change();
CREATE TRIGGER refusal_counts_no_truncate BEFORE TRUNCATE ON refusal_counts
    FOR EACH STATEMENT EXECUTE FUNCTION pstd_refuse_change();
CREATE TRIGGER redemption_counts_immutable BEFORE UPDATE OR DELETE ON redemption_counts
    FOR EACH ROW EXECUTE FUNCTION pstd_refuse_change();
CREATE TRIGGER redemption_counts_no_truncate BEFORE TRUNCATE ON redemption_counts
    FOR EACH STATEMENT EXECUTE FUNCTION pstd_refuse_change();
CREATE TRIGGER key_transitions_immutable BEFORE UPDATE OR DELETE ON key_transitions
    FOR EACH ROW EXECUTE FUNCTION pstd_refuse_change();
CREATE TRIGGER key_transitions_no_truncate BEFORE TRUNCATE ON key_transitions
    FOR EACH STATEMENT EXECUTE FUNCTION pstd_refuse_change();

-- Redemption counts of keys whose partitions still exist, in the same shape
-- as redemption_counts. A view, so the auditor reads aggregates without any
-- privilege on the redemption rows themselves (the view runs with its
-- owner's privileges).
CREATE VIEW redemption_counts_live AS
SELECT r.key_id,
       (r.redeemed_at AT TIME ZONE 'UTC')::date AS day,
       coalesce(r.redeeming_origin, '')          AS redeeming_origin,
       count(*)                                  AS redemptions
FROM redemptions r
GROUP BY 1, 2, 3;

-- Rolls a key's redemptions partition up into redemption_counts and drops it
-- (through redemptions_drop_partition, which checks that the key is retired
-- and past its expiry), all in the caller's transaction: a partition is never
-- dropped without its counts. It takes ACCESS EXCLUSIVE on redemptions first,
-- the lock the drop needs anyway, so no row can arrive between the count and
-- the drop. Returns NULL if the partition is already gone, else
-- {"rows": n, "partition": name, "counts": [{day, redeeming_origin, redemptions}]}.
-- The service role may run this and not redemptions_drop_partition itself.
-- +goose StatementBegin
CREATE FUNCTION redemptions_rollup_and_drop(p_key_id bigint) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    k      key_epochs%ROWTYPE;
    part   regclass;
    nrows  bigint;
    counts jsonb;
BEGIN
    SELECT * INTO k FROM key_epochs WHERE key_id = p_key_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'key % does not exist', p_key_id USING ERRCODE = 'no_data_found';
    END IF;
    IF k.retired_at IS NULL OR k.expiry > now() THEN
        RAISE EXCEPTION 'key %: redemptions are kept until the key is retired and past its expiry', p_key_id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    LOCK TABLE redemptions IN ACCESS EXCLUSIVE MODE;
    SELECT c.oid INTO part
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'redemptions'::regclass AND c.relname = 'redemptions_k' || p_key_id;
    IF part IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO redemption_counts (key_id, day, redeeming_origin, redemptions)
    SELECT key_id, day, redeeming_origin, redemptions FROM redemption_counts_live WHERE key_id = p_key_id;
    SELECT coalesce(jsonb_agg(jsonb_build_object('day', c.day, 'redeeming_origin', c.redeeming_origin,
                                                 'redemptions', c.redemptions)
                              ORDER BY c.day, c.redeeming_origin), '[]'::jsonb)
      INTO counts
      FROM redemption_counts c WHERE c.key_id = p_key_id;
    nrows := redemptions_drop_partition(p_key_id);
    RETURN jsonb_build_object('rows', nrows, 'partition', part::text, 'counts', counts);
END
$$;
-- +goose StatementEnd

-- Roles. Roles are cluster-wide while this migration runs once per
-- database, and several databases of one cluster may migrate at the same
-- moment: create each role only if absent, and treat losing the race to
-- another database's transaction as success. NOLOGIN: an operator grants
-- them to the login roles the service and auditors use.
-- +goose StatementBegin
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['pstd_service', 'pstd_auditor'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL; -- created by a concurrent migration of another database
            END;
        END IF;
    END LOOP;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO pstd_service, pstd_auditor', current_schema());
END
$$;
-- +goose StatementEnd

-- Only the schema owner may run the raw partition drop; everyone else goes
-- through the rollup. (Functions are executable by PUBLIC by default.)
REVOKE EXECUTE ON FUNCTION redemptions_drop_partition(bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION redemptions_rollup_and_drop(bigint) FROM PUBLIC;

-- pstd_service: what pstd serve and pstctl's key commands need, and no more.
-- It owns nothing, so it cannot ALTER a table, DISABLE TRIGGER or drop a
-- partition; it has no UPDATE, DELETE or TRUNCATE on the audit log or the
-- counts, and may update only the retirement columns of the key tables.
GRANT SELECT, INSERT ON key_epochs, rr_keys, commitments, audit_log, redemptions,
                        issuance_counts, refusal_counts, key_transitions TO pstd_service;
GRANT UPDATE (retired_at) ON key_epochs TO pstd_service;
GRANT UPDATE (retired_at, not_after) ON rr_keys TO pstd_service;
GRANT USAGE ON SEQUENCE key_id_seq TO pstd_service;
GRANT SELECT ON key_epoch_states, redemption_counts, redemption_counts_live, goose_db_version TO pstd_service;
GRANT EXECUTE ON FUNCTION redemptions_rollup_and_drop(bigint) TO pstd_service;

-- pstd_auditor: reads the audit log, counts and public key data; never a
-- sealed secret (key_epochs is granted column by column, without
-- sealed_secret) and never a redemption row (only the aggregate view).
GRANT SELECT ON audit_log, commitments, rr_keys, issuance_counts, refusal_counts,
                redemption_counts, redemption_counts_live, key_transitions,
                key_epoch_states, goose_db_version TO pstd_auditor;
GRANT SELECT (key_id, protocol, kek_label, public_key, imported, created_at, not_before, expiry, retired_at)
    ON key_epochs TO pstd_auditor;

-- +goose Down
-- +goose StatementBegin
DO $$
BEGIN
    RAISE EXCEPTION 'pstd migration 3 cannot be reverted: its counts are part of the audit record; restore from a backup';
END
$$;
-- +goose StatementEnd
