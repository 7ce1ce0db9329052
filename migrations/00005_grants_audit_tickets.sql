-- pstd schema, version 5: what the roles of migration 3 need of migrations
-- 2 (signed checkpoints, the redemption high-water sequence) and 4 (spent
-- issuance tickets). The service writes checkpoints and spends tickets but
-- cannot change or delete a checkpoint (the guard triggers, and no UPDATE or
-- DELETE grant); the auditor reads checkpoints and nothing secret.

-- +goose Up
GRANT SELECT, INSERT ON audit_checkpoints TO pstd_service;
GRANT USAGE, SELECT ON SEQUENCE redemption_hwm TO pstd_service;
GRANT SELECT, INSERT, DELETE ON spent_tickets TO pstd_service;
GRANT SELECT ON audit_checkpoints TO pstd_auditor;

-- +goose Down
-- +goose StatementBegin
DO $$
BEGIN
    RAISE EXCEPTION 'pstd migration 5 cannot be reverted; restore from a backup';
END
$$;
-- +goose StatementEnd
