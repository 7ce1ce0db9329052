package testenv

import (
	"context"
	"net/url"
	"testing"

	"github.com/jackc/pgx/v5"
)

// RoleURL returns dbURL connecting as a login role that is a member of role
// (a role the migrations create, such as pstd_service or pstd_auditor), and
// nothing else: the login role "<role>_login" is created on the test cluster
// if absent (the cluster uses trust authentication, so it needs no
// password). Unlike SET ROLE, a session of it cannot step back up to the
// superuser. dbURL must connect as the cluster's superuser (as NewDatabase's
// and NewCluster's URLs do), and the database must already be migrated, so
// that role exists.
func RoleURL(t testing.TB, dbURL, role string) string {
	t.Helper()
	admin := WithDatabase(t, dbURL, "postgres")
	login := role + "_login"
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("connect to test cluster: %v", err)
	}
	defer conn.Close(ctx)
	// Roles are cluster-wide and tests run in parallel: take turns, under
	// an advisory lock in the one admin database.
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(1886614628, 100)`); err != nil {
			return err
		}
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, login).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			if _, err := tx.Exec(ctx, `CREATE ROLE `+pgx.Identifier{login}.Sanitize()+` LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT`); err != nil {
				return err
			}
		}
		var member bool
		if err := tx.QueryRow(ctx, `SELECT pg_has_role($1, $2, 'MEMBER')`, login, role).Scan(&member); err != nil {
			return err
		}
		if !member {
			if _, err := tx.Exec(ctx, `GRANT `+pgx.Identifier{role}.Sanitize()+` TO `+pgx.Identifier{login}.Sanitize()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("login role for %s: %v", role, err)
	}
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatalf("parse database URL: %v", err)
	}
	u.User = url.User(login)
	return u.String()
}
