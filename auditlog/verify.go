package auditlog

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
)

// Error names the first event or checkpoint that does not verify.
type Error struct {
	Seq        int64 // the event, or 0
	Checkpoint int64 // the checkpoint, or 0
	Reason     string
}

func (e *Error) Error() string {
	switch {
	case e.Checkpoint != 0:
		return fmt.Sprintf("audit checkpoint %d does not verify: %s", e.Checkpoint, e.Reason)
	case e.Seq != 0:
		return fmt.Sprintf("audit event %d does not verify: %s", e.Seq, e.Reason)
	}
	return "audit log does not verify: " + e.Reason
}

// KeyInfo is an audit key introduced on the chain.
type KeyInfo struct {
	ID           string `json:"id"`
	PublicKey    []byte `json:"public_key"` // DER SubjectPublicKeyInfo
	Fingerprint  string `json:"fingerprint"`
	IntroducedAt int64  `json:"introduced_at_seq"`
	pub          *ecdsa.PublicKey
}

// Fingerprint of a DER public key: SHA-256, hex.
func Fingerprint(der []byte) string {
	d := sha256.Sum256(der)
	return hex.EncodeToString(d[:])
}

// Verifier checks a log event by event, then its checkpoints and anchors.
// Feed events in order with Add; the first failure is returned and kept.
type Verifier struct {
	// TrustRoot, if set, is the fingerprint the first audit key must have
	// (from a head an auditor kept); otherwise the first key is trusted on
	// first use and reported in Result.Root.
	TrustRoot string

	next    int64
	prev    []byte
	hashes  [][]byte
	legacy  int64
	signed  int64
	keys    map[string]*KeyInfo
	order   []*KeyInfo
	ids     map[string]int64
	cps     []Checkpoint
	digests []string
	failed  error
}

// Result summarises a verified log.
type Result struct {
	Events      int64     `json:"events"`
	Legacy      int64     `json:"legacy_unsigned_events"`
	Signed      int64     `json:"signed_events"`
	Checkpoints int       `json:"checkpoints"`
	HeadSeq     int64     `json:"head_seq"`
	HeadHash    string    `json:"head_hash"`
	Root        string    `json:"trust_root"`
	Keys        []KeyInfo `json:"keys"`
	Fences      []Fence   `json:"fences,omitempty"`
}

// NewVerifier returns a verifier for a log that starts at event 1.
func NewVerifier() *Verifier {
	return &Verifier{next: 1, prev: make([]byte, sha256.Size), keys: map[string]*KeyInfo{}, ids: map[string]int64{}}
}

func (v *Verifier) fail(err *Error) error {
	if v.failed == nil {
		v.failed = err
	}
	return v.failed
}

// Add checks the next event.
func (v *Verifier) Add(e Event) error {
	if v.failed != nil {
		return v.failed
	}
	bad := func(format string, args ...any) error {
		return v.fail(&Error{Seq: e.Seq, Reason: fmt.Sprintf(format, args...)})
	}
	switch {
	case e.Seq != v.next && e.Seq > v.next:
		return v.fail(&Error{Seq: v.next, Reason: fmt.Sprintf("missing (the next event is %d)", e.Seq)})
	case e.Seq != v.next:
		return bad("out of order (expected %d)", v.next)
	case !bytes.Equal(e.PrevHash, v.prev):
		return bad("prev_hash is not the previous event's hash")
	}
	want, err := e.ComputeHash()
	if err != nil {
		return bad("%v", err)
	}
	if !bytes.Equal(want, e.Hash) {
		return bad("hash does not match the event's fields")
	}
	switch e.Version {
	case V1:
		if v.signed > 0 {
			return bad("an unsigned (version 1) event after signed ones")
		}
		v.legacy++
	case V2:
		if len(e.ID) != 32 {
			return bad("event id is not 32 hex digits")
		}
		if first, dup := v.ids[e.ID]; dup {
			return bad("event id repeats event %d (a replayed event)", first)
		}
		v.ids[e.ID] = e.Seq
		if err := v.checkSignature(&e); err != nil {
			return bad("%v", err)
		}
		v.signed++
	default:
		return bad("unknown version %d", e.Version)
	}
	v.prev = e.Hash
	v.hashes = append(v.hashes, e.Hash)
	v.next++
	return nil
}

func (v *Verifier) checkSignature(e *Event) error {
	c, err := e.Canonical()
	if err != nil {
		return err
	}
	intro, ierr := e.keyIntro()
	if ierr != nil && !errors.Is(ierr, errNotIntro) {
		return ierr
	}
	signer := v.keys[e.Key]
	var newKey *KeyInfo
	if ierr == nil {
		pub, err := x509.ParsePKIXPublicKey(intro.PublicKey)
		ec, ok := pub.(*ecdsa.PublicKey)
		if err != nil || !ok {
			return fmt.Errorf("audit key %s: not an ECDSA public key", intro.Key)
		}
		if _, known := v.keys[intro.Key]; known {
			if !bytes.Equal(v.keys[intro.Key].PublicKey, intro.PublicKey) {
				return fmt.Errorf("audit key %s introduced again with another public key", intro.Key)
			}
		} else {
			newKey = &KeyInfo{ID: intro.Key, PublicKey: intro.PublicKey, Fingerprint: Fingerprint(intro.PublicKey), IntroducedAt: e.Seq, pub: ec}
		}
		if len(v.keys) == 0 {
			// The trust root: the first key, signing its own introduction.
			if e.Key != intro.Key {
				return errors.New("the first audit key must sign its own introduction")
			}
			if v.TrustRoot != "" && newKey.Fingerprint != v.TrustRoot {
				return fmt.Errorf("the first audit key %s has fingerprint %s, not the trusted %s", intro.Key, newKey.Fingerprint, v.TrustRoot)
			}
			signer = newKey
		}
	}
	if signer == nil {
		return fmt.Errorf("signed by %q, which no trusted event introduced", e.Key)
	}
	if !ecdsa.VerifyASN1(signer.pub, Digest(c), e.Sig) {
		return fmt.Errorf("signature by %s does not verify", e.Key)
	}
	if newKey != nil {
		v.keys[newKey.ID] = newKey
		v.order = append(v.order, newKey)
	}
	return nil
}

// Checkpoints checks the stored checkpoints, oldest first, against the
// events added so far.
func (v *Verifier) Checkpoints(cps []Signed) error {
	if v.failed != nil {
		return v.failed
	}
	for _, s := range cps {
		c, canonical, err := s.Open()
		if err != nil {
			return v.fail(&Error{Checkpoint: c.N, Reason: err.Error()})
		}
		bad := func(format string, args ...any) error {
			return v.fail(&Error{Checkpoint: c.N, Reason: fmt.Sprintf(format, args...)})
		}
		k := v.keys[c.Key]
		if k == nil {
			return bad("signed by %q, which no trusted event introduced", c.Key)
		}
		if !ecdsa.VerifyASN1(k.pub, Digest(canonical), s.Sig) {
			return bad("signature by %s does not verify", c.Key)
		}
		if n := len(v.cps); n > 0 {
			last := v.cps[n-1]
			if c.N <= last.N {
				return bad("out of order after checkpoint %d", last.N)
			}
			if c.Prev != v.digests[n-1] {
				return bad("prev is not checkpoint %d's digest", last.N)
			}
			if c.AuditSeq < last.AuditSeq {
				return bad("covers fewer events than checkpoint %d", last.N)
			}
			if c.RedemptionHWM < last.RedemptionHWM && c.Fence == nil {
				return bad("redemption high-water mark went back without a fence")
			}
		} else if c.Prev != "" && c.Fence == nil {
			return bad("the first checkpoint names a predecessor that is missing")
		}
		if c.AuditSeq >= v.next {
			return bad("covers event %d, beyond the log's last event %d (events were deleted)", c.AuditSeq, v.next-1)
		}
		if c.AuditSeq > 0 && hex.EncodeToString(v.hashes[c.AuditSeq-1]) != c.Head {
			return bad("event %d's hash is not the one it signed (the log was rewritten)", c.AuditSeq)
		}
		d, _ := s.Digest()
		v.cps = append(v.cps, c)
		v.digests = append(v.digests, d)
	}
	return nil
}

// Anchor checks that the log reaches the signed checkpoint a, kept outside
// the database (the HSM's anchor, or a head an auditor saved): the log must
// hold that very checkpoint, so nothing it covered was truncated or rolled
// back. Call it after Checkpoints.
func (v *Verifier) Anchor(a Signed, source string) error {
	if v.failed != nil {
		return v.failed
	}
	c, canonical, err := a.Open()
	if err != nil {
		return v.fail(&Error{Reason: source + ": " + err.Error()})
	}
	k := v.keys[c.Key]
	if k == nil || !ecdsa.VerifyASN1(k.pub, Digest(canonical), a.Sig) {
		return v.fail(&Error{Reason: fmt.Sprintf("%s: checkpoint %d is not signed by a trusted audit key", source, c.N)})
	}
	want, _ := a.Digest()
	for i, have := range v.cps {
		if have.N == c.N {
			if v.digests[i] != want {
				return v.fail(&Error{Checkpoint: c.N, Reason: source + " holds a different checkpoint with this number"})
			}
			return nil
		}
	}
	newest := int64(0)
	if n := len(v.cps); n > 0 {
		newest = v.cps[n-1].N
	}
	return v.fail(&Error{Checkpoint: c.N, Reason: fmt.Sprintf("%s holds checkpoint %d (event %d) but the log lacks it (its newest is %d): truncated or restored from an older backup",
		source, c.N, c.AuditSeq, newest)})
}

// Result reports what was verified, or the first failure.
func (v *Verifier) Result() (Result, error) {
	r := Result{Events: v.next - 1, Legacy: v.legacy, Signed: v.signed, Checkpoints: len(v.cps), HeadSeq: v.next - 1}
	if n := len(v.hashes); n > 0 {
		r.HeadHash = hex.EncodeToString(v.hashes[n-1])
	}
	for _, k := range v.order {
		r.Keys = append(r.Keys, *k)
	}
	if len(v.order) > 0 {
		r.Root = v.order[0].Fingerprint
	}
	for _, c := range v.cps {
		if c.Fence != nil {
			r.Fences = append(r.Fences, *c.Fence)
		}
	}
	return r, v.failed
}

// VerifySignature checks one v2 event's signature against a DER public key.
func VerifySignature(e *Event, publicDER []byte) error {
	pub, err := x509.ParsePKIXPublicKey(publicDER)
	ec, ok := pub.(*ecdsa.PublicKey)
	if err != nil || !ok {
		return errors.New("not an ECDSA public key")
	}
	c, err := e.Canonical()
	if err != nil {
		return err
	}
	if !ecdsa.VerifyASN1(ec, Digest(c), e.Sig) {
		return errors.New("signature does not verify")
	}
	return nil
}
