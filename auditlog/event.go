package auditlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/gowebpki/jcs"
)

// Versions of the event encoding. Version 1 events come from before signed
// audit events (migration 1); they are accepted only as a prefix of the log
// and are covered by checkpoints alone.
const (
	V1 = 1
	V2 = 2
)

// ActionKeyCreate is the event that introduces an audit key; its details
// carry the key's id and public key.
const ActionKeyCreate = "audit_key.create"

// Event is one audit record with the readable fields an auditor sees.
type Event struct {
	Seq     int64           `json:"seq"`
	Version int             `json:"v"`
	ID      string          `json:"id,omitempty"` // random, 32 hex digits (v2)
	At      time.Time       `json:"at"`
	Actor   string          `json:"actor"`
	Action  string          `json:"action"`
	Subject string          `json:"subject"`
	Details json.RawMessage `json:"details"`
	Key     string          `json:"key,omitempty"` // the audit key that signed it (v2)
	Sig     []byte          `json:"sig,omitempty"` // ASN.1 ECDSA over SHA-256(canonical bytes) (v2)
	// LegacyDetails is a version 1 event's details exactly as the database
	// normalised them, which its hash covers.
	LegacyDetails string `json:"legacy_details,omitempty"`
	PrevHash      []byte `json:"prev_hash"`
	Hash          []byte `json:"hash"`
}

// TimeFormat is how times appear in canonical bytes: UTC, microseconds.
const TimeFormat = "2006-01-02T15:04:05.000000Z"

// Canonical returns the bytes a v2 event's signature covers: the JCS form of
// {"v":2,"id":…,"at":…,"actor":…,"action":…,"subject":…,"details":{…},"key":…}.
func (e *Event) Canonical() ([]byte, error) {
	if e.Version != V2 {
		return nil, fmt.Errorf("event %d: version %d has no canonical form", e.Seq, e.Version)
	}
	details := e.Details
	if len(details) == 0 {
		details = json.RawMessage("{}")
	}
	if d := bytes.TrimSpace(details); len(d) == 0 || d[0] != '{' {
		return nil, fmt.Errorf("event %d: details are not a JSON object", e.Seq)
	}
	obj := struct {
		V       int             `json:"v"`
		ID      string          `json:"id"`
		At      string          `json:"at"`
		Actor   string          `json:"actor"`
		Action  string          `json:"action"`
		Subject string          `json:"subject"`
		Details json.RawMessage `json:"details"`
		Key     string          `json:"key"`
	}{V2, e.ID, e.At.UTC().Format(TimeFormat), e.Actor, e.Action, e.Subject, details, e.Key}
	raw, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("event %d: %w", e.Seq, err)
	}
	return jcs.Transform(raw)
}

// Digest is what a signature signs: SHA-256 of the canonical bytes.
func Digest(canonical []byte) []byte {
	d := sha256.Sum256(canonical)
	return d[:]
}

// ChainHash is a v2 event's hash:
//
//	SHA-256("pstd-audit-v2" || prev_hash (32) || int64be(seq)
//	        || uint32be(len(canonical)) || canonical || uint32be(len(sig)) || sig)
func ChainHash(prev []byte, seq int64, canonical, sig []byte) []byte {
	h := sha256.New()
	h.Write([]byte("pstd-audit-v2"))
	h.Write(prev)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(seq))
	h.Write(n[:])
	for _, f := range [][]byte{canonical, sig} {
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(f)))
		h.Write(l[:])
		h.Write(f)
	}
	return h.Sum(nil)
}

// LegacyHash is a v1 event's hash (migration 1's audit_log_hash):
//
//	SHA-256("pstd-audit-v1" || prev_hash || int64be(seq) || int64be(at, Unix µs)
//	        || for actor, action, subject, details: uint32be(len) || bytes)
func LegacyHash(prev []byte, seq int64, at time.Time, actor, action, subject, details string) []byte {
	h := sha256.New()
	h.Write([]byte("pstd-audit-v1"))
	h.Write(prev)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(seq))
	h.Write(n[:])
	binary.BigEndian.PutUint64(n[:], uint64(at.UnixMicro()))
	h.Write(n[:])
	for _, f := range []string{actor, action, subject, details} {
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(f)))
		h.Write(l[:])
		h.Write([]byte(f))
	}
	return h.Sum(nil)
}

// ComputeHash recomputes e's hash from its fields and prev_hash.
func (e *Event) ComputeHash() ([]byte, error) {
	switch e.Version {
	case V1:
		return LegacyHash(e.PrevHash, e.Seq, e.At, e.Actor, e.Action, e.Subject, e.LegacyDetails), nil
	case V2:
		c, err := e.Canonical()
		if err != nil {
			return nil, err
		}
		return ChainHash(e.PrevHash, e.Seq, c, e.Sig), nil
	}
	return nil, fmt.Errorf("event %d: unknown version %d", e.Seq, e.Version)
}

// KeyIntro is the details of an audit_key.create event.
type KeyIntro struct {
	Key       string `json:"key"`
	PublicKey []byte `json:"public_key"` // SubjectPublicKeyInfo, DER (base64 in JSON)
}

var errNotIntro = errors.New("not a key introduction")

// keyIntro returns the key an audit_key.create event introduces.
func (e *Event) keyIntro() (KeyIntro, error) {
	if e.Action != ActionKeyCreate {
		return KeyIntro{}, errNotIntro
	}
	var k KeyIntro
	if err := json.Unmarshal(e.Details, &k); err != nil || k.Key == "" || len(k.PublicKey) == 0 {
		return KeyIntro{}, fmt.Errorf("event %d: audit_key.create without key and public_key", e.Seq)
	}
	return k, nil
}
