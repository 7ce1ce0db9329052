package doctor

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pstd/pstd/signer/voprf"
)

// The key commitment rules, in our words. Chromium parses a commitment
// (services/network/trust_tokens/trust_token_key_commitment_parser.cc) and
// then filters its keys (trust_token_key_filtering.cc); the project's own
// voprf.ParseCommitment is stricter in places (it refuses unknown fields and
// ids above 2^32-1 only), so the doctor states Chromium's rule directly:
//
//   - The body is a JSON object whose members are keyed by protocol version;
//     Chromium takes "PrivateStateTokenV1VOPRF" in preference to the others.
//     That member must be an object whose "protocol_version" is the same
//     string, or the whole commitment is refused.
//   - "id" must be a JSON integer that fits a C int (Chromium reads it with
//     FindInt: 2.0, "7" and 2^31 are all refused) and be > 0. An issuer must
//     only ever raise it: every change to the key set gets a larger id.
//   - "batchsize" is a JSON integer > 0 (else the commitment is refused);
//     Chrome never asks for more than 100 tokens at once and registration
//     wants 1..100.
//   - "keys" is an object; each member whose value is an object is a key.
//     Its name is the key id as a decimal string that must fit a uint32 (else
//     the commitment is refused). "Y" is the standard, padded base64 of the
//     101-byte key blob u32(key id) || 0x04 || X || Y, a P-384 point on the
//     curve; "expiry" is a JSON *string* of decimal microseconds since the
//     Unix epoch (a JSON number, or seconds, is the classic rejection).
//   - A key whose expiry has passed is silently ignored by Chromium. Of the
//     rest Chromium keeps only the 6 that expire soonest (3 for PMB): a
//     far-future key is the first to be dropped when an issuer lists more
//     than six, and otherwise nothing bounds how far ahead an expiry may be.
//     Tokens whose key leaves the commitment are discarded by the browser.

const (
	maxKeys     = 6
	maxBatch    = voprf.MaxBatchSize
	farFuture   = 366 * 24 * time.Hour
	keyBlobSize = 4 + voprf.ElementSize
)

var (
	jsonInteger = regexp.MustCompile(`^-?(0|[1-9][0-9]*)$`)
	decimal     = regexp.MustCompile(`^[0-9]+$`)
)

// commitmentInfo is what later checks need from a commitment.
type commitmentInfo struct {
	id        int64 // 0 if unusable
	batchSize int   // 0 if unusable; capped at 100 otherwise
	keys      map[uint32]*voprf.PublicKey
}

// analyzeCommitment applies the rules above to a commitment body. It is pure
// (the fuzz target calls it) and returns one result for each of CheckJSON,
// CheckID, CheckBatchSize, CheckKeyCount, CheckKeyIDs, CheckKeyY,
// CheckExpiryFormat and CheckExpiry, in that order.
func analyzeCommitment(body []byte, now time.Time) ([]CheckResult, *commitmentInfo) {
	info := &commitmentInfo{keys: map[uint32]*voprf.PublicKey{}}
	var out []CheckResult
	add := func(id string, st Status, fix, format string, args ...any) {
		out = append(out, CheckResult{ID: id, Status: st, Message: fmt.Sprintf(format, args...), Fix: fix})
	}
	dependents := []string{CheckID, CheckBatchSize, CheckKeyCount, CheckKeyIDs, CheckKeyY, CheckExpiryFormat, CheckExpiry}
	skipRest := func() ([]CheckResult, *commitmentInfo) {
		for _, id := range dependents {
			add(id, StatusSkip, "", "the commitment's JSON shape is wrong (see json)")
		}
		return out, info
	}

	var outer map[string]json.RawMessage
	if err := json.Unmarshal(body, &outer); err != nil || outer == nil {
		add(CheckJSON, StatusFail, `serve a JSON object: {"PrivateStateTokenV1VOPRF": {"protocol_version": …, "id": …, "batchsize": …, "keys": {…}}}`,
			"the body is not a JSON object")
		return skipRest()
	}
	raw, ok := outer[voprf.ProtocolVersion]
	if !ok {
		var found []string
		for k := range outer {
			found = append(found, strconv.Quote(truncate(k, 40)))
		}
		sort.Strings(found)
		add(CheckJSON, StatusFail, `wrap the commitment in an object keyed by its protocol version: {"PrivateStateTokenV1VOPRF": {…}}`,
			"no %q member (found %s); the doctor checks PST v1 VOPRF issuers", voprf.ProtocolVersion, orNone(found))
		return skipRest()
	}
	var entry map[string]json.RawMessage
	if err := json.Unmarshal(raw, &entry); err != nil || entry == nil {
		add(CheckJSON, StatusFail, `make "PrivateStateTokenV1VOPRF" an object`, "%q is not a JSON object, so Chrome refuses the commitment", voprf.ProtocolVersion)
		return skipRest()
	}
	var pv string
	if err := json.Unmarshal(entry["protocol_version"], &pv); err != nil || pv != voprf.ProtocolVersion {
		add(CheckJSON, StatusFail, `set "protocol_version": "PrivateStateTokenV1VOPRF" inside the member of the same name`,
			`"protocol_version" is %s, not %q: Chrome refuses the commitment`, shortJSON(entry["protocol_version"]), voprf.ProtocolVersion)
		return skipRest()
	}
	keysRaw, hasKeys := entry["keys"]
	var keys map[string]json.RawMessage
	if hasKeys {
		if err := json.Unmarshal(keysRaw, &keys); err != nil || keys == nil {
			add(CheckJSON, StatusFail, `make "keys" an object keyed by decimal key id: {"1": {"Y": …, "expiry": …}}`,
				`"keys" is %s, not an object: Chrome refuses the commitment`, shortJSON(keysRaw))
			return skipRest()
		}
	}
	var unknown []string
	for k := range entry {
		switch k {
		case "protocol_version", "id", "batchsize", "keys":
		default:
			unknown = append(unknown, strconv.Quote(truncate(k, 24)))
		}
	}
	jsonAt := len(out)
	add(CheckJSON, StatusPass, "", "%s object with protocol_version, id, batchsize and keys", voprf.ProtocolVersion)

	// id
	if id, msg := jsonInt(entry["id"]); msg != "" {
		add(CheckID, StatusFail, `make "id" a JSON integer from 1 to 2147483647 that grows with every key change`, `"id" %s: Chrome refuses the commitment`, msg)
	} else if id < 1 || id > math.MaxInt32 {
		add(CheckID, StatusFail, `make "id" a JSON integer from 1 to 2147483647 that grows with every key change`, `"id" is %d, outside 1..2147483647: Chrome refuses the commitment`, id)
	} else {
		info.id = id
		add(CheckID, StatusPass, "", "id %d", id)
	}

	// batchsize
	if bs, msg := jsonInt(entry["batchsize"]); msg != "" {
		add(CheckBatchSize, StatusFail, `make "batchsize" a JSON integer from 1 to 100`, `"batchsize" %s: Chrome refuses the commitment`, msg)
	} else if bs < 1 {
		add(CheckBatchSize, StatusFail, `make "batchsize" a JSON integer from 1 to 100`, `"batchsize" is %d: Chrome refuses a batch size below 1`, bs)
	} else if bs > maxBatch {
		info.batchSize = maxBatch
		add(CheckBatchSize, StatusFail, `make "batchsize" at most 100`, `"batchsize" is %d: Chrome asks for at most 100 tokens and registration refuses more`, bs)
	} else {
		info.batchSize = int(bs)
		add(CheckBatchSize, StatusPass, "", "batchsize %d", bs)
	}

	// keys: count, labels, Y, expiry
	labels := make([]string, 0, len(keys))
	for l := range keys {
		labels = append(labels, l)
	}
	sort.Slice(labels, func(i, j int) bool { // numerically when possible, for stable messages
		a, ea := strconv.ParseUint(labels[i], 10, 64)
		b, eb := strconv.ParseUint(labels[j], 10, 64)
		if ea == nil && eb == nil && a != b {
			return a < b
		}
		return labels[i] < labels[j]
	})
	var idProblems, yProblems, fmtProblems []string
	var expired, far []string
	var latest time.Time
	objects := 0
	blobIDs := map[uint32]string{}
	for _, l := range labels {
		ln := truncate(l, 24) // labels are the issuer's words: bounded in messages
		var k map[string]json.RawMessage
		if err := json.Unmarshal(keys[l], &k); err != nil || k == nil {
			idProblems = append(idProblems, fmt.Sprintf("%q is %s, not a key object, and Chrome skips it", ln, shortJSON(keys[l])))
			continue
		}
		objects++
		for m := range k {
			if m != "Y" && m != "expiry" {
				unknown = append(unknown, strconv.Quote(truncate(m, 24))+" in key "+strconv.Quote(ln))
			}
		}
		label, labelErr := uint64(0), ""
		if !decimal.MatchString(l) {
			labelErr = fmt.Sprintf("label %q is not a decimal key id", ln)
		} else if v, err := strconv.ParseUint(l, 10, 32); err != nil {
			labelErr = fmt.Sprintf("label %q does not fit a uint32", ln)
		} else {
			label = v
			if strconv.FormatUint(v, 10) != l {
				labelErr = fmt.Sprintf("label %q has leading zeros", ln)
			}
		}
		if labelErr != "" {
			idProblems = append(idProblems, labelErr)
		}

		var y string
		var pk *voprf.PublicKey
		if err := json.Unmarshal(k["Y"], &y); err != nil || k["Y"] == nil {
			yProblems = append(yProblems, fmt.Sprintf("key %s: Y is %s, not a string", ln, shortJSON(k["Y"])))
		} else if blob, err := base64.StdEncoding.Strict().DecodeString(y); err != nil {
			yProblems = append(yProblems, fmt.Sprintf("key %s: Y is not standard padded base64", ln))
		} else if len(blob) != keyBlobSize {
			yProblems = append(yProblems, fmt.Sprintf("key %s: Y decodes to %d bytes, not %d (u32 key id || 0x04 || X || Y)", ln, len(blob), keyBlobSize))
		} else if p, err := voprf.ParsePublicKeyBlob(blob); err != nil {
			yProblems = append(yProblems, fmt.Sprintf("key %s: Y is not a P-384 point on the curve in uncompressed form (%v)", ln, err))
		} else {
			pk = p
			if labelErr == "" && uint64(p.KeyID) != label {
				idProblems = append(idProblems, fmt.Sprintf("label %q holds a blob for key id %d", ln, p.KeyID))
			} else if other, dup := blobIDs[p.KeyID]; dup {
				idProblems = append(idProblems, fmt.Sprintf("labels %q and %q both hold key id %d", truncate(other, 24), ln, p.KeyID))
			}
			blobIDs[p.KeyID] = l
		}

		var exp string
		expOK := false
		if err := json.Unmarshal(k["expiry"], &exp); err != nil || k["expiry"] == nil {
			fmtProblems = append(fmtProblems, fmt.Sprintf("key %s: expiry is %s, not a string", ln, shortJSON(k["expiry"])))
		} else if !decimal.MatchString(exp) {
			fmtProblems = append(fmtProblems, fmt.Sprintf("key %s: expiry %q is not a string of decimal digits", ln, truncate(exp, 32)))
		} else if us, err := strconv.ParseInt(exp, 10, 64); err != nil || us > time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC).UnixMicro() {
			fmtProblems = append(fmtProblems, fmt.Sprintf("key %s: expiry %s is beyond the year 9999 (nanoseconds?)", ln, truncate(exp, 32)))
		} else {
			expOK = true
			t := time.UnixMicro(us).UTC()
			switch {
			case !t.After(now):
				if us < 1e14 { // before 1973 when read as µs: seconds or milliseconds
					expired = append(expired, fmt.Sprintf("key %s: expiry %s reads as %s — seconds or milliseconds instead of microseconds?", ln, exp, t.Format(time.RFC3339)))
				} else {
					expired = append(expired, fmt.Sprintf("key %s expired %s", ln, t.Format(time.RFC3339)))
				}
			case t.Sub(now) > farFuture:
				far = append(far, fmt.Sprintf("key %s expires %s", ln, t.Format(time.RFC3339)))
			}
			if t.After(now) && pk != nil && t.After(latest) {
				latest = t
			}
		}
		if pk != nil && expOK && labelErr == "" {
			info.keys[pk.KeyID] = pk
		}
	}

	if len(unknown) > 0 {
		sort.Strings(unknown)
		if len(unknown) > 8 {
			unknown = append(unknown[:8], "…")
		}
		out[jsonAt] = CheckResult{ID: CheckJSON, Status: StatusWarn, Fix: "drop the unknown members; strict parsers (pstd's own client among them) refuse them",
			Message: "shape is right; unknown members " + strings.Join(unknown, ", ") + " are ignored by Chrome"}
	}
	switch {
	case !hasKeys || objects == 0:
		add(CheckKeyCount, StatusFail, "publish at least one key (and at most 6)", "the commitment lists no keys: Chrome cannot issue or redeem")
	case objects > maxKeys:
		add(CheckKeyCount, StatusFail, "publish at most 6 keys: retire old ones before adding new ones",
			"%d keys: Chrome keeps only the 6 that expire soonest and registration refuses more", objects)
	default:
		add(CheckKeyCount, StatusPass, "", "%d key(s)", objects)
	}
	switch {
	case len(idProblems) > 0:
		add(CheckKeyIDs, StatusFail, `name each key by its key id as a decimal string equal to the first 4 bytes of its Y blob, e.g. "1"`,
			"%s", capped(idProblems))
	case objects == 0:
		add(CheckKeyIDs, StatusSkip, "", "no keys")
	default:
		add(CheckKeyIDs, StatusPass, "", "labels %s match their blobs", strings.ReplaceAll(capped(labels), "; ", ", "))
	}
	switch {
	case len(yProblems) > 0:
		add(CheckKeyY, StatusFail, "publish Y as standard base64 (with padding) of u32(key id) || the 97-byte uncompressed P-384 public key",
			"%s", capped(yProblems))
	case objects == 0:
		add(CheckKeyY, StatusSkip, "", "no keys")
	default:
		add(CheckKeyY, StatusPass, "", "every Y is a 101-byte blob with a P-384 point on the curve")
	}
	switch {
	case len(fmtProblems) > 0:
		add(CheckExpiryFormat, StatusFail, `write "expiry" as a JSON string of microseconds since the Unix epoch, e.g. "1767225600000000"`,
			"%s", capped(fmtProblems))
	case objects == 0:
		add(CheckExpiryFormat, StatusSkip, "", "no keys")
	default:
		add(CheckExpiryFormat, StatusPass, "", "every expiry is a string of microseconds")
	}
	switch {
	case objects == 0:
		add(CheckExpiry, StatusSkip, "", "no keys")
	case len(expired) > 0:
		add(CheckExpiry, StatusFail, "drop expired keys and publish a successor before the last key expires; expiry is in microseconds",
			"%s: Chrome ignores expired keys", capped(expired))
	case latest.IsZero():
		add(CheckExpiry, StatusSkip, "", "no key with a readable expiry (see expiry-format, key-y)")
	case latest.Sub(now) < soonWindow:
		add(CheckExpiry, StatusWarn, "publish the next key now: keys must overlap so that there is never a moment without a valid key",
			"the last key expires %s (in %s): after that no key is valid", latest.Format(time.RFC3339), latest.Sub(now).Round(time.Hour))
	case len(far) > 0:
		add(CheckExpiry, StatusWarn, "give keys expiries of months, not years, and rotate them; Chrome ignores rotations faster than 60 days",
			"%s, more than a year ahead: Chrome accepts it, but keeps only the 6 soonest-expiring keys, so a far-future key is dropped first once more are published", capped(far))
	default:
		add(CheckExpiry, StatusPass, "", "keys valid until %s at the latest", latest.Format(time.RFC3339))
	}
	if len(info.keys) == 0 {
		info.keys = nil
	}
	return out, info
}

// jsonInt reads a JSON integer literal as Chromium's FindInt would accept
// one: a number without fraction or exponent. msg says what is wrong.
func jsonInt(raw json.RawMessage) (int64, string) {
	if raw == nil {
		return 0, "is missing"
	}
	s := string(bytes.TrimSpace(raw))
	if !jsonInteger.MatchString(s) {
		return 0, "is " + shortJSON(raw) + ", not a JSON integer"
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, "is " + truncate(s, 24) + ", far outside 1..2147483647"
	}
	return v, ""
}

// shortJSON renders a raw JSON value for a message, bounded in length.
func shortJSON(raw json.RawMessage) string {
	if raw == nil {
		return "missing"
	}
	s := strings.TrimSpace(string(raw))
	kind := "a number"
	switch {
	case s == "":
		return "empty"
	case s[0] == '"':
		kind = "a string"
	case s[0] == '{':
		return "an object"
	case s[0] == '[':
		return "an array"
	case s == "null":
		return "null"
	case s == "true" || s == "false":
		return "a boolean"
	}
	return kind + " " + truncate(s, 32)
}

// truncate bounds an issuer-supplied string for a message (the table
// renderer removes control characters; JSON escapes them).
func truncate(s string, n int) string {
	if len(s) <= n {
		return strings.ToValidUTF8(s, "�")
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// capped joins at most 6 problems (a commitment may list thousands of keys).
func capped(s []string) string {
	if len(s) > 6 {
		return strings.Join(s[:6], "; ") + fmt.Sprintf("; and %d more", len(s)-6)
	}
	return strings.Join(s, "; ")
}

func orNone(s []string) string {
	if len(s) > 8 {
		s = append(s[:8:8], fmt.Sprintf("and %d more", len(s)-8))
	}
	if len(s) == 0 {
		return "no members"
	}
	return strings.Join(s, ", ")
}

// checkCommitment fetches the key commitment, checks the response and its
// body, then fetches it again to see that the id has not gone down. It
// returns nil if the commitment gives no usable key.
func (d *run) checkCommitment(ctx context.Context) *commitmentInfo {
	bodyChecks := []string{CheckContentType, CheckJSON, CheckID, CheckIDMonotonic, CheckBatchSize,
		CheckKeyCount, CheckKeyIDs, CheckKeyY, CheckExpiryFormat, CheckExpiry}
	u := d.url("key-commitment")
	resp, err := d.get(ctx, "key-commitment", "", maxCommitmentBytes)
	switch {
	case err != nil && resp == nil:
		d.unreachable = true
		d.fail(CheckCommitmentGet, "make GET "+u+" answer 200 with the commitment", "GET %s: %v", u, err)
	case err != nil:
		d.fail(CheckCommitmentGet, "serve only the commitment (a few KiB) at this path", "GET %s: %v", u, err)
	case resp.status >= 300 && resp.status < 400:
		d.fail(CheckCommitmentGet, "serve the commitment at exactly "+u+" (no redirect)",
			"GET %s answered %d, a redirect to %q: the well-known path must answer itself", u, resp.status, truncate(resp.header.Get("Location"), 100))
	case resp.status != 200:
		d.fail(CheckCommitmentGet, "serve the commitment at exactly "+u, "GET %s answered HTTP %d, not 200", u, resp.status)
	default:
		d.pass(CheckCommitmentGet, "GET %s answered 200 (%d bytes)", u, len(resp.body))
	}
	if !d.ok(CheckCommitmentGet) {
		d.skipAll("the commitment could not be fetched (see commitment-get)", bodyChecks...)
		return nil
	}

	// Exactly application/pst-issuer-directory: Google's registration
	// refused issuers for application/json and for "; charset=utf-8".
	const ctWant = "application/pst-issuer-directory"
	ct := resp.header.Values("Content-Type")
	switch {
	case len(ct) == 1 && ct[0] == ctWant:
		d.pass(CheckContentType, "Content-Type: %s", ctWant)
	case len(ct) == 0:
		d.fail(CheckContentType, "send Content-Type: "+ctWant+" (no parameters)", "no Content-Type header")
	default:
		d.fail(CheckContentType, "send Content-Type: "+ctWant+" exactly, with no charset or other parameter",
			"Content-Type is %q", truncate(strings.Join(ct, ", "), 100))
	}

	results, info := analyzeCommitment(resp.body, d.opts.Now())
	for _, r := range results {
		if r.ID == CheckBatchSize { // the report reads id, id-monotonic, batchsize, …
			d.checkIDMonotonic(ctx, info)
		}
		d.add(r)
	}
	if len(info.keys) == 0 || info.batchSize == 0 {
		return nil
	}
	return info
}

// checkIDMonotonic fetches the commitment a second time: the id may stay or
// grow, never shrink. A shrinking id is what a load balancer in front of
// replicas that disagree produces; Chrome's collector would see keys come
// and go.
func (d *run) checkIDMonotonic(ctx context.Context, first *commitmentInfo) {
	if first.id == 0 {
		d.skip(CheckIDMonotonic, "no usable id in the first fetch (see id)")
		return
	}
	resp, err := d.get(ctx, "key-commitment", "", maxCommitmentBytes)
	if err != nil || resp.status != 200 {
		msg := ""
		if err != nil {
			msg = err.Error()
		} else {
			msg = fmt.Sprintf("HTTP %d", resp.status)
		}
		d.fail(CheckIDMonotonic, "make every replica serve the commitment", "second fetch failed: %s", msg)
		return
	}
	var outer map[string]struct {
		ID json.RawMessage `json:"id"`
	}
	id := int64(0)
	if json.Unmarshal(resp.body, &outer) == nil {
		id, _ = jsonInt(outer[voprf.ProtocolVersion].ID)
	}
	switch {
	case id == 0:
		d.fail(CheckIDMonotonic, "make every replica serve the same, well-formed commitment", "second fetch has no readable id")
	case id < first.id:
		d.fail(CheckIDMonotonic, "only ever raise the id; make every replica behind the load balancer serve the newest commitment",
			"id went down from %d to %d between two fetches", first.id, id)
	case id == first.id:
		d.pass(CheckIDMonotonic, "id %d again on a second fetch", id)
	default:
		d.pass(CheckIDMonotonic, "id grew from %d to %d between two fetches (a key change)", first.id, id)
	}
}
