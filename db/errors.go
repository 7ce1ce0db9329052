package db

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"

	"github.com/pstd/pstd/internal/pstderr"
)

// ErrExists is returned (wrapped) when a key id or record-key id is already
// taken.
var ErrExists = errors.New("db: already exists")

// SQLError is a server error reduced to what is safe to log: SQLSTATE,
// constraint and message. The server's DETAIL (which can quote a failing
// row's values) and the statement are dropped.
type SQLError struct {
	Code       string // SQLSTATE
	Constraint string // the violated constraint, if any
	Message    string
}

func (e *SQLError) Error() string {
	if e.Constraint != "" {
		return fmt.Sprintf("%s (SQLSTATE %s, constraint %s)", e.Message, e.Code, e.Constraint)
	}
	return fmt.Sprintf("%s (SQLSTATE %s)", e.Message, e.Code)
}

// sqlState returns the SQLSTATE of err's server error, or "".
func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	var se *SQLError
	if errors.As(err, &se) {
		return se.Code
	}
	return ""
}

// sanitize replaces a *pgconn.PgError with a *SQLError.
func sanitize(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return &SQLError{Code: pe.Code, Constraint: pe.ConstraintName, Message: pe.Message}
	}
	return err
}

// unavailable reports whether err means the database cannot be used right
// now (as opposed to a bug or a refused request).
func unavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, puddle.ErrClosedPool) || errors.Is(err, net.ErrClosed) {
		return true
	}
	if pgconn.Timeout(err) || pgconn.SafeToRetry(err) {
		return true
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	if code := sqlState(err); code != "" {
		switch {
		case strings.HasPrefix(code, "08"), // connection exception
			strings.HasPrefix(code, "53"), // insufficient resources (disk full, too many connections)
			strings.HasPrefix(code, "57"), // operator intervention: shutdown, query_canceled, cannot connect now
			strings.HasPrefix(code, "58"), // system error (I/O)
			code == "55P03",               // lock_not_available (lock_timeout)
			code == "40001",               // serialization_failure
			code == "40P01",               // deadlock_detected
			code == "25006":               // read_only_sql_transaction: failed over to a standby
			return true
		}
		return false
	}
	if errors.Is(err, pgconn.ErrConnClosed) {
		return true
	}
	// A connection that died under a query is reported without SQLSTATE.
	msg := err.Error()
	return strings.Contains(msg, "conn closed") || strings.Contains(msg, "connection reset") ||
		strings.Contains(msg, "broken pipe")
}

// wrap classifies a database error: pstderr errors pass through; database
// unavailability becomes pstderr Unavailable (so the service fails closed);
// anything else is a plain error (internal). Server errors are sanitized.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var pe *pstderr.Error
	if errors.As(err, &pe) {
		return err
	}
	cause := fmt.Errorf("db: %s: %w", op, sanitize(err))
	if unavailable(err) {
		return pstderr.Wrap(pstderr.Unavailable, cause, "database unavailable")
	}
	return cause
}
