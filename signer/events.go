package signer

import (
	"context"
	"errors"

	"github.com/pstd/pstd/db"
	"github.com/pstd/pstd/internal/pstderr"
)

// Audit actions the service writes besides the store's own.
const (
	ActionOperatorCommand = "operator.command"
	ActionOperatorRefused = "operator.refused"
	ActionReplicaStart    = "replica.start"
	ActionReplicaStop     = "replica.stop"
)

// Operator is who runs a key-changing command, and why: pstctl's --actor
// (PSTD_ACTOR) and --reason. Command names the command ("keys rotate").
type Operator struct {
	Actor   string
	Reason  string
	Command string
}

type operatorKey struct{}

// WithOperator returns ctx carrying op. The key administration methods
// (RetireKey, ForceRotate, ImportKey, RotateRRKey, Rotate) called with it
// append an operator.command event with op's reason in the transaction of
// the change, and an operator.refused event when they refuse.
func WithOperator(ctx context.Context, op Operator) context.Context {
	return context.WithValue(ctx, operatorKey{}, op)
}

func operatorFrom(ctx context.Context) (Operator, bool) {
	op, ok := ctx.Value(operatorKey{}).(Operator)
	return op, ok && op.Actor != ""
}

// auditOperator appends the operator.command event of the change being made
// in ctx's transaction, if ctx carries an operator.
func (s *Service) auditOperator(ctx context.Context, subject string) error {
	op, ok := operatorFrom(ctx)
	if !ok {
		return nil
	}
	_, err := s.store.AppendAudit(ctx, db.Event{Actor: op.Actor, Action: ActionOperatorCommand, Subject: subject,
		Details: map[string]any{"command": op.Command, "reason": op.Reason}})
	return err
}

// auditRefusal appends an operator.refused event, on its own (the refused
// change's transaction has rolled back), when err is a refusal of an
// operator's command: anything but an unavailable dependency or another
// replica holding the rotation lock. It returns err, with a failure to
// record joined to it.
func (s *Service) auditRefusal(ctx context.Context, subject string, err error) error {
	op, ok := operatorFrom(ctx)
	if err == nil || !ok || errors.Is(err, errRotating) {
		return err
	}
	if k, ok := pstderr.KindOf(err); ok && k == pstderr.Unavailable {
		return err
	}
	if _, aerr := s.store.AppendAudit(context.WithoutCancel(ctx), db.Event{Actor: op.Actor, Action: ActionOperatorRefused, Subject: subject,
		Details: map[string]any{"command": op.Command, "reason": op.Reason, "refusal": err.Error()}}); aerr != nil {
		return errors.Join(err, s.dbErr(aerr, "recording the refusal failed"))
	}
	return err
}

// ReplicaInfo describes a starting replica for its replica.start event:
// what it was built from and a digest of its effective settings (never the
// settings themselves, which name files and hosts, and never a secret).
type ReplicaInfo struct {
	Version        string
	Revision       string
	GoVersion      string
	SettingsDigest string
}

func (s *Service) replicaDetails() map[string]any {
	return map[string]any{
		"replica": s.cfg.Replica, "version": s.info.Version, "revision": s.info.Revision,
		"go_version": s.info.GoVersion, "settings_digest": s.info.SettingsDigest,
	}
}

// Started records the replica's start on the audit log.
func (s *Service) Started(ctx context.Context, info ReplicaInfo) error {
	s.info = info
	_, err := s.store.AppendAudit(ctx, db.Event{Actor: s.cfg.Actor, Action: ActionReplicaStart, Subject: "replica:" + s.cfg.Replica,
		Details: s.replicaDetails()})
	if err != nil {
		return s.dbErr(err, "recording the replica's start failed")
	}
	return nil
}

// Stopped flushes every count bucket, the open ones too, and records the
// replica's clean stop. Call it once requests have drained and Run has
// returned, so nothing is counted after the flush.
func (s *Service) Stopped(ctx context.Context) error {
	if err := s.FlushCounts(ctx, true); err != nil {
		return err
	}
	_, err := s.store.AppendAudit(ctx, db.Event{Actor: s.cfg.Actor, Action: ActionReplicaStop, Subject: "replica:" + s.cfg.Replica,
		Details: s.replicaDetails()})
	if err != nil {
		return s.dbErr(err, "recording the replica's stop failed")
	}
	return nil
}
