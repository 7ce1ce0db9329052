package auditlog

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/gowebpki/jcs"
)

// Checkpoint is a signed statement of the audit log's state: the newest
// event it covers and that event's hash, the previous checkpoint, and the
// redemption high-water mark (the value of the database's redemption
// sequence, which only grows), and the VOPRF keys live at that moment.
type Checkpoint struct {
	V             int      `json:"v"`
	N             int64    `json:"n"`
	At            string   `json:"at"` // TimeFormat
	AuditSeq      int64    `json:"audit_seq"`
	Head          string   `json:"head"` // hex of event AuditSeq's hash
	Prev          string   `json:"prev"` // hex digest of checkpoint N-1; "" for the first
	RedemptionHWM int64    `json:"redemption_hwm"`
	LiveKeys      []uint32 `json:"live_keys"`
	Fence         *Fence   `json:"fence,omitempty"`
	Key           string   `json:"key"` // the audit key that signs it
}

// Fence records that the database was found behind the HSM's anchor and
// every key live at the anchor was retired (pstctl keys fence): it names the
// anchor it replaces, whose events may be missing from this database.
type Fence struct {
	N             int64  `json:"n"`
	Digest        string `json:"digest"`
	AuditSeq      int64  `json:"audit_seq"`
	RedemptionHWM int64  `json:"redemption_hwm"`
	Reason        string `json:"reason"`
}

// Canonical returns the JCS bytes of c.
func (c *Checkpoint) Canonical() ([]byte, error) {
	if c.LiveKeys == nil {
		c.LiveKeys = []uint32{}
	}
	raw, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	return jcs.Transform(raw)
}

// Signed is a checkpoint as stored and exported: its body and the audit
// key's ASN.1 ECDSA signature over SHA-256 of the body's canonical bytes.
type Signed struct {
	Body json.RawMessage `json:"body"`
	Sig  []byte          `json:"sig"`
}

// Open parses s, returning the checkpoint and its canonical bytes. It does
// not check the signature.
func (s Signed) Open() (Checkpoint, []byte, error) {
	var c Checkpoint
	if len(s.Body) == 0 {
		return c, nil, errors.New("empty checkpoint")
	}
	canonical, err := jcs.Transform(s.Body)
	if err != nil {
		return c, nil, fmt.Errorf("checkpoint body: %w", err)
	}
	if err := json.Unmarshal(canonical, &c); err != nil {
		return c, nil, fmt.Errorf("checkpoint body: %w", err)
	}
	if c.V != 1 || c.N < 1 || c.AuditSeq < 0 || c.Key == "" {
		return c, nil, fmt.Errorf("checkpoint %d: malformed", c.N)
	}
	if c.AuditSeq > 0 {
		if h, err := hex.DecodeString(c.Head); err != nil || len(h) != sha256.Size {
			return c, nil, fmt.Errorf("checkpoint %d: head is not a SHA-256 in hex", c.N)
		}
	}
	return c, canonical, nil
}

// Digest identifies a signed checkpoint: SHA-256(canonical body || sig).
// The next checkpoint's prev is this value in hex.
func (s Signed) Digest() (string, error) {
	_, canonical, err := s.Open()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write(canonical)
	h.Write(s.Sig)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Marshal is the anchor's encoding in the token: JSON of s.
func (s Signed) Marshal() ([]byte, error) { return json.Marshal(s) }

// ParseSigned is Marshal's inverse.
func ParseSigned(b []byte) (Signed, error) {
	var s Signed
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("signed checkpoint: %w", err)
	}
	_, _, err := s.Open()
	return s, err
}
