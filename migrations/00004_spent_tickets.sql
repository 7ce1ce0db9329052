-- pstd schema, version 4: spent issuance tickets. A ticket is single use;
-- this table keeps the SHA-256 of each one spent until it expires, and
-- nothing about the issuance it admitted (no blinded element, no client).

-- +goose Up
CREATE TABLE spent_tickets (
    hash       bytea       PRIMARY KEY CONSTRAINT spent_tickets_hash_sha256 CHECK (octet_length(hash) = 32),
    expires_at timestamptz NOT NULL
);
CREATE INDEX spent_tickets_expires_at ON spent_tickets (expires_at);

-- +goose Down
-- Migrations are forward-only: dropping the spent tickets would let every
-- unexpired ticket be presented again.
-- +goose StatementBegin
DO $$
BEGIN
    RAISE EXCEPTION 'pstd migration 4 cannot be reverted: spent issuance tickets would become spendable again';
END
$$;
-- +goose StatementEnd
