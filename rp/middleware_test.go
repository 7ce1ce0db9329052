package rp

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
)

func TestMiddleware(t *testing.T) {
	f := newFixture(t)
	good, _ := FormatRedemptionRecordHeader([]Entry{{f.iss.origin, f.iss.sign("rr-1", RecordType, f.iss.claims(rpOrigin, t0))}})
	expired, _ := FormatRedemptionRecordHeader([]Entry{{f.iss.origin, f.iss.sign("rr-1", RecordType, f.iss.claims(rpOrigin, t0.Add(-3*time.Hour)))}})
	untrusted, _ := FormatRedemptionRecordHeader([]Entry{{"https://stranger.example", "x.y.z"}})
	malformed := `"https://a.example";redemption-record=`

	type answer struct {
		Records int    `json:"records"`
		HdrErr  string `json:"header_error"`
		Fails   int    `json:"failures"`
	}
	handler := func(c echo.Context) error {
		res, err := ResultFrom(c)
		a := answer{Records: len(RecordsFrom(c)), Fails: len(res.Failures)}
		if err != nil {
			a.HdrErr = err.Error()
		}
		return c.JSON(http.StatusOK, a)
	}

	cases := []struct {
		name     string
		required bool
		header   *string
		status   int
		records  int
		problem  string // problem type, or "" for handler output
		detail   string
	}{
		{"optional, absent", false, nil, 200, 0, "", ""},
		{"optional, good", false, &good, 200, 1, "", ""},
		{"optional, expired", false, &expired, 200, 0, "", ""},
		{"optional, malformed", false, &malformed, 200, 0, "", ""},
		{"required, absent", true, nil, 401, 0, ProblemMissing, "no Sec-Redemption-Record"},
		{"required, good", true, &good, 200, 1, "", ""},
		{"required, expired", true, &expired, 403, 0, ProblemInvalid, "redemption record expired"},
		{"required, untrusted only", true, &untrusted, 403, 0, ProblemInvalid, "issuer not trusted"},
		{"required, malformed", true, &malformed, 403, 0, ProblemInvalid, "malformed Sec-Redemption-Record header"},
	}
	// The same cases through the echo middleware and the plain one.
	plain := func(w http.ResponseWriter, r *http.Request) {
		res, err := ResultFromContext(r.Context())
		a := answer{Records: len(RecordsFromContext(r.Context())), Fails: len(res.Failures)}
		if err != nil {
			a.HdrErr = err.Error()
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(a)
	}
	stacks := map[string]func(required bool) http.Handler{
		"echo": func(required bool) http.Handler {
			e := echo.New()
			e.GET("/", handler, Middleware(f.v, MiddlewareOptions{Required: required}))
			return e
		},
		"net/http": func(required bool) http.Handler {
			return Handler(f.v, HandlerOptions{Required: required})(http.HandlerFunc(plain))
		},
	}
	for stack, build := range stacks {
		for _, tc := range cases {
			t.Run(stack+"/"+tc.name, func(t *testing.T) {
				req := httptest.NewRequest(http.MethodGet, "/", nil)
				if tc.header != nil {
					req.Header.Set(HeaderName, *tc.header)
				}
				rec := httptest.NewRecorder()
				build(tc.required).ServeHTTP(rec, req)
				if rec.Code != tc.status {
					t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
				}
				if tc.problem != "" {
					if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
						t.Fatalf("content type %q", ct)
					}
					var p struct{ Type, Title, Detail string }
					if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
						t.Fatal(err)
					}
					if p.Type != tc.problem || p.Title == "" || !strings.Contains(p.Detail, tc.detail) {
						t.Fatalf("problem %+v", p)
					}
					// The refusal names the kind, not the record or internals.
					if strings.Contains(p.Detail, "eyJ") {
						t.Fatalf("detail leaks the record: %s", p.Detail)
					}
					return
				}
				var a answer
				if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
					t.Fatal(err)
				}
				if a.Records != tc.records {
					t.Fatalf("handler saw %d records, want %d", a.Records, tc.records)
				}
				if tc.header == &malformed && a.HdrErr == "" {
					t.Fatal("handler not told about the malformed header")
				}
				if tc.header == &expired && a.Fails != 1 {
					t.Fatalf("handler saw %d failures", a.Fails)
				}
			})
		}
	}

	t.Run("skipper", func(t *testing.T) {
		e := echo.New()
		e.GET("/", handler, Middleware(f.v, MiddlewareOptions{Required: true, Skipper: func(echo.Context) bool { return true }}))
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		if rec.Code != 200 {
			t.Fatalf("skipped request refused: %d", rec.Code)
		}
		rec = httptest.NewRecorder()
		Handler(f.v, HandlerOptions{Required: true, Skip: func(*http.Request) bool { return true }})(http.HandlerFunc(plain)).
			ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		if rec.Code != 200 {
			t.Fatalf("skipped request refused by the plain middleware: %d", rec.Code)
		}
	})
}

func TestRecordsFromWithoutMiddleware(t *testing.T) {
	c := echo.New().NewContext(httptest.NewRequest(http.MethodGet, "/", nil), httptest.NewRecorder())
	if RecordsFrom(c) != nil {
		t.Fatal("records without middleware")
	}
	if res, err := ResultFrom(c); err != nil || res.Records != nil || res.Failures != nil {
		t.Fatal("result without middleware")
	}
}
