-- pstd schema, version 6: an index for the key events replicas look up at
-- every key refresh and checkpoint (a signed key.create after the HSM's
-- audit head, or a signed key.retire of a key the database says is live),
-- so that check stays cheap however long the audit log grows.

-- +goose Up
CREATE INDEX audit_log_action_subject ON audit_log (action, subject, seq);

-- +goose Down
-- Forward-only, as every pstd migration.
-- +goose StatementBegin
DO $$
BEGIN
    RAISE EXCEPTION 'pstd migration 6 cannot be reverted; restore from a backup';
END
$$;
-- +goose StatementEnd
