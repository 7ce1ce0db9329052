// Package httpapi is pstd's HTTP face: the Private State Token well-known
// endpoints, problem documents, readiness, metrics and request logging. It
// speaks HTTP only; the cryptography, the keys, the HSM and the database sit
// behind the Issuer interface (implemented by package signer).
//
// # Endpoints
//
//	GET|HEAD  /.well-known/private-state-token/key-commitment  application/pst-issuer-directory (exactly; no charset), ETag, Cache-Control: public, max-age=300, 304 on If-None-Match
//	GET|POST  /.well-known/private-state-token/issuance        Sec-Private-State-Token in and out
//	GET|POST  /.well-known/private-state-token/redemption      Sec-Private-State-Token in, the redemption record out (+ Sec-Private-State-Token-Lifetime)
//	GET|HEAD  /.well-known/private-state-token/jwks.json       application/jwk-set+json, ETag, public caching
//	GET|HEAD  /healthz   liveness: 200 while the process serves
//	GET|HEAD  /readyz    readiness: probes the issuer now; 503 + problem when not ready
//	GET       /metrics   Prometheus, from the injected registry
//
// # Status and headers (docs/PROTOCOL.md, "HTTP: headers and status codes")
//
// Chromium ignores the status of issuance and redemption responses and looks
// only for the Sec-Private-State-Token response header. So a success is 200
// with the header, and every refusal is a 4xx/5xx WITHOUT it (writeProblem
// strips it) and with an RFC 9457 application/problem+json body whose "type"
// is "urn:pstd:problem:<reason>" (reason: pstderr.Kind's name, or not-found,
// method-not-allowed, body-too-large, timeout).
//
// Status is the one mapping from error kind to status: every "the client sent
// something unusable" kind (malformed, bad-point, bad-count,
// unsupported-version, unknown-key, invalid-token, bad-proof) is 400. We do
// not use 422: the messages travel in headers, not in an enclosed body, and
// one status for the family keeps monitoring simple; "type" tells them apart.
// already-redeemed is 409, denied 403, rate-limited 429 with Retry-After,
// unavailable 503, anything else 500 with detail "internal error" (the cause
// goes to the log only).
//
// The issue response is sent as padded standard base64. The redemption record
// is sent as is (it is already a compact JWS, visible ASCII): Chromium stores
// the header value verbatim and hands that exact string to relying parties.
// Token responses carry Cache-Control: no-store.
//
// Request parsing is strict, like Chromium's own decoder: exactly one
// Sec-Private-State-Token header of unquoted, padded standard base64 with no
// whitespace (Go's decoder would skip CR/LF, so the alphabet is checked
// first), at most MaxIssueRequest / MaxRedeemRequest bytes once decoded, and
// Sec-Private-State-Token-Crypto-Version must be PrivateStateTokenV1VOPRF.
//
// # Readiness
//
// Until the issuer's Ready has succeeded, issuance and redemption answer 503.
// Ready touches the database and the HSM, so requests never call it: they
// read a cached state that a background probe (WatchReadiness, started by
// Run) refreshes every ReadyInterval. A request that finds the state not
// ready, or an issuer call that fails with Unavailable, asks for an early
// probe (at most one every 200 ms), so recovery and failure are noticed
// within a moment. /readyz probes synchronously, bounded by ReadyTimeout;
// concurrent /readyz calls share one probe, which runs detached from them,
// so a client that hangs up cannot leave the replica marked not ready.
// Once shutdown begins the server reports not ready, so load balancers drain
// it while in-flight requests finish.
//
// # Issuance policy
//
// Policy decides how many tokens a request may get; Issue is called with
// max = min(batch size, allowed). AllowAll is Config's default. RateLimit
// keeps a token bucket per client address (IPv6 by /64) that refills over a
// window; an address is forgotten once a window has passed since its last
// request (its bucket would be full again), and the number held is bounded
// (least recently seen forgotten first). Addresses are held only in memory.
//
// pstd serve limits by default: a RateLimit of DefaultRateLimit × batch size
// tokens per DefaultRateWindow (PSTD_RATE_LIMIT, PSTD_RATE_WINDOW; 0 turns
// it off). The count a request asks for (the message's first field, capped
// at the batch size; a zero or unreadable count is a full batch) is what
// Allow is asked for; the bucket grants that many, or the whole tokens it
// holds if fewer (a partial batch), and loses what it grants at once,
// before any ticket or webhook policy and any signature, whatever their
// outcome. With less than one token left the request is refused (429
// rate-limited, Retry-After when the next token is due, at least 1 s). A
// browser asks for whole batches, so the limit reads as DefaultRateLimit
// requests per window.
//
// # CORS and Permissions-Policy
//
// Issuance and redemption are requested by the browser on behalf of a page,
// typically from the issuer's own pages or a partner's, and the key
// commitment and JWKS are public documents. By default any origin may use
// the API (Access-Control-Allow-Origin: *): a PST issuer is meant to be
// embedded by many sites, no cookies or credentials are involved, and the
// tokens themselves are what vouches for a client, not the calling origin.
// Set AllowedOrigins to restrict it: then only listed origins (and
// IssuerOrigin) get Access-Control-Allow-Origin (echoed, with Vary: Origin),
// and an issuance or redemption request carrying any other Origin is refused
// with 403 denied, so no token is issued or record returned to that page.
// Preflights are answered with the Sec-Private-State-Token* request headers
// allowed; responses expose Sec-Private-State-Token,
// Sec-Private-State-Token-Lifetime, X-Request-Id and Retry-After.
//
// Every response carries
// "Permissions-Policy: private-state-token-issuance=*, private-state-token-redemption=*".
// It matters on the issuer's own pages (the demo pages, mounted with
// WithRoutes): it lets them run issuance and redemption even when a partner
// embeds them in an iframe (the iframe also needs allow="..."); on
// non-document responses it has no effect.
//
// # Logging and privacy
//
// One JSON line per request (log/slog): request_id (random on the issuance
// and redemption routes; elsewhere X-Request-Id when it is 1–64 characters
// of [A-Za-z0-9._:-], else random; echoed back), method,
// route template (never the raw path or query), status, latency_ms and the
// problem reason. Nothing that could link an issuance to a redemption is
// logged: no header values, no tokens, no records, no user agent, and no
// client address unless Config.LogClientAddr opts in. Internal errors add
// the cause (and a panic's stack).
//
// # Robustness
//
// A panic in a handler, a policy or an issuer call becomes a 500 problem and
// a log line, never a crash. Request bodies are bounded (413). Each request
// gets RequestTimeout: issuer calls run under that deadline and the handler
// answers 503 timeout when it passes even if the issuer ignores its context.
// (A redemption cut off that way may still have been recorded; the browser
// spends its token either way, docs/PROTOCOL.md ("HTTP: headers and status codes"), so nothing is lost that a
// dropped connection would not lose too.)
// http.Server has ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout
// and MaxHeaderBytes, so slow clients cannot pin connections. Run shuts down
// gracefully when its context ends: stop accepting, finish in-flight
// requests within ShutdownTimeout, then close.
package httpapi
