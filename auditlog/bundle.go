package auditlog

import (
	"encoding/json"
	"fmt"
	"io"
)

// BundleFormat names the export format.
const BundleFormat = "pstd-audit-bundle-v1"

// Bundle is what `pstctl audit export` writes and `pstctl audit verify
// --bundle` reads: one uncompressed JSON document with every event as
// readable fields, every checkpoint, the audit public keys and, when the
// exporter could read it, the HSM's anchor.
type Bundle struct {
	Format      string    `json:"format"`
	ExportedAt  string    `json:"exported_at"`
	Events      []Event   `json:"events"`
	Checkpoints []Signed  `json:"checkpoints"`
	Keys        []KeyInfo `json:"keys"`
	Anchor      *Signed   `json:"anchor,omitempty"`
}

// ReadBundle decodes a bundle, refusing unknown fields so that a bundle
// edited into another shape is noticed rather than half read.
func ReadBundle(r io.Reader) (*Bundle, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var b Bundle
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("audit bundle: %w", err)
	}
	if b.Format != BundleFormat {
		return nil, fmt.Errorf("audit bundle: format %q, want %q", b.Format, BundleFormat)
	}
	return &b, nil
}

// Verify checks everything in the bundle: the chain, every signature, every
// checkpoint, the keys it lists against the keys the chain introduces, and
// the anchor if it carries one.
func (b *Bundle) Verify(trustRoot string) (Result, error) {
	v := NewVerifier()
	v.TrustRoot = trustRoot
	for _, e := range b.Events {
		if err := v.Add(e); err != nil {
			r, _ := v.Result()
			return r, err
		}
	}
	if err := v.Checkpoints(b.Checkpoints); err != nil {
		r, _ := v.Result()
		return r, err
	}
	if b.Anchor != nil {
		if err := v.Anchor(*b.Anchor, "the bundle's anchor"); err != nil {
			r, _ := v.Result()
			return r, err
		}
	}
	r, err := v.Result()
	if err != nil {
		return r, err
	}
	listed := map[string]string{}
	for _, k := range b.Keys {
		listed[k.ID] = Fingerprint(k.PublicKey)
	}
	for _, k := range r.Keys {
		if listed[k.ID] != k.Fingerprint {
			return r, &Error{Reason: fmt.Sprintf("the bundle's key list does not match audit key %s introduced on the chain", k.ID)}
		}
		delete(listed, k.ID)
	}
	for id := range listed {
		return r, &Error{Reason: fmt.Sprintf("the bundle lists audit key %s, which the chain never introduced", id)}
	}
	return r, nil
}
