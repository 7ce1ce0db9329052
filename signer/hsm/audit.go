package hsm

import (
	"context"
	"crypto"
	"errors"
	"fmt"
)

// AuditKeyID is the id of audit signing key generation gen ("audit-<gen>");
// its token label is RRKeyLabel(AuditKeyID(gen)), "pstd-audit-<gen>". Audit
// keys are ECDSA P-256 pairs made on the token like the record keys, and
// sign the audit log's events and checkpoints; they never sign records.
func AuditKeyID(gen int) string { return fmt.Sprintf("audit-%d", gen) }

// GenerateAuditKey creates audit key id on the token (see GenerateRRKey).
func (h *HSM) GenerateAuditKey(ctx context.Context, id string) (crypto.Signer, error) {
	return h.GenerateRRKey(ctx, id)
}

// FindAuditKey returns audit key id, or ErrKeyNotFound.
func (h *HSM) FindAuditKey(ctx context.Context, id string) (crypto.Signer, error) {
	return h.FindRRKey(ctx, id)
}

// AnchorLabel is the token data object that holds the newest signed audit
// checkpoint: a copy of the audit head that a database restore or rollback
// cannot reach.
const AnchorLabel = "pstd-audit-head"

// maxAnchor bounds what is read back from the token.
const maxAnchor = 64 << 10

// ReadAnchor returns the token-held checkpoint copies: normally one, none
// before the first checkpoint, two if a writer stopped half-way (the caller
// takes the newest).
func (h *HSM) ReadAnchor(ctx context.Context) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var vs [][]byte
	err := h.do(func(l *live) error {
		var err error
		vs, err = l.b.readData(AnchorLabel)
		return err
	})
	for _, b := range vs {
		if len(b) > maxAnchor {
			return nil, errors.New("hsm: the audit anchor is implausibly large")
		}
	}
	return vs, err
}

// WriteAnchor replaces the token-held checkpoint.
func (h *HSM) WriteAnchor(ctx context.Context, b []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(b) == 0 || len(b) > maxAnchor {
		return fmt.Errorf("hsm: audit anchor of %d bytes", len(b))
	}
	return h.do(func(l *live) error { return l.b.writeData(AnchorLabel, b) })
}
