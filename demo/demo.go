// Package demo serves pstd's demo pages (pstd serve --demo): an issuer page
// that asks the browser for tokens and redeems one, a relying-party page whose
// server verifies the browser's redemption record, and an issuer frame for
// embedding. Off by default: a production issuer serves only its well-known
// endpoints.
package demo

import (
	"embed"
	"io/fs"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

//go:embed static
var static embed.FS

// VerifiedRecord is what the relying-party page shows of a verified record.
type VerifiedRecord struct {
	Issuer   string    `json:"issuer"`
	KeyID    uint32    `json:"key_id"`
	RecordID string    `json:"record_id"`
	Audience string    `json:"audience"`
	IssuedAt time.Time `json:"issued_at"`
	Expiry   time.Time `json:"expiry"`
}

// Verifier checks the Sec-Redemption-Record header of a request and returns
// the verified records of trusted issuers.
type Verifier func(r *http.Request) ([]VerifiedRecord, error)

// Register mounts the demo under /demo/ on e.
func Register(e *echo.Echo, verify Verifier) {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err)
	}
	files := http.StripPrefix("/demo/", http.FileServer(http.FS(sub)))
	e.GET("/demo", func(c echo.Context) error { return c.Redirect(http.StatusFound, "/demo/") })
	e.GET("/demo/*", echo.WrapHandler(noStore(files)))
	e.Match([]string{http.MethodGet, http.MethodPost}, "/demo/rp/verify", func(c echo.Context) error {
		recs, err := verify(c.Request())
		body := map[string]any{"verified": recs}
		if recs == nil {
			body["verified"] = []VerifiedRecord{}
		}
		if err != nil {
			body["detail"] = err.Error()
		}
		return c.JSON(http.StatusOK, body)
	})
}

// noStore keeps browsers from caching the demo while it is being developed
// and lets the embedding test frame be shown from any origin.
func noStore(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}
