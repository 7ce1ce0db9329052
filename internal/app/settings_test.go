package app

import (
	"strings"
	"testing"
)

// The start-up log line must not carry a database password, wherever the
// connection string puts it.
func TestRedactURLHidesPasswords(t *testing.T) {
	for _, raw := range []string{
		"postgres://pstd:s3cret-pw@db.example:5433/pstd?sslmode=disable",
		"postgres://pstd@db.example/pstd?password=s3cret-pw",
		"host=db.example user=pstd password=s3cret-pw dbname=pstd",
		"postgres://pstd@db.example/pstd?sslpassword=s3cret-pw&sslmode=disable",
		"postgres://pstd:s3cret-pw@[::1/pstd", // unparsable
	} {
		got := redactURL(raw)
		if strings.Contains(got, "s3cret-pw") {
			t.Errorf("redactURL(%q) = %q shows the password", raw, got)
		}
	}
	if got := redactURL("postgres://pstd:pw@db.example:5433/pstd"); got != "postgres://pstd@db.example:5433/pstd" {
		t.Errorf("redactURL = %q", got)
	}
}
