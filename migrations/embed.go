// Package migrations holds pstd's PostgreSQL schema as plain goose SQL files,
// embedded so the binaries carry their own schema. Package db applies them
// (db.Store.Migrate); nothing else should read them.
//
// Rules for new files: never edit a migration that has shipped; add the next
// number (00002_….sql) instead. Keep every statement transactional (goose
// runs each file in one transaction) and give each a `-- +goose Down` section
// that either reverts it or refuses with a reason.
package migrations

import "embed"

// FS is the migration files, NNNNN_name.sql, at the root.
//
//go:embed *.sql
var FS embed.FS
