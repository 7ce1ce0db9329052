package signer

import (
	"errors"
	"fmt"

	"github.com/pstd/pstd/internal/pstderr"
	"github.com/pstd/pstd/signer/voprf"
)

// voprfKinds maps the protocol package's refusals to the service's catalogue.
var voprfKinds = map[voprf.Kind]pstderr.Kind{
	voprf.Malformed:    pstderr.Malformed,
	voprf.BadPoint:     pstderr.BadPoint,
	voprf.BadCount:     pstderr.BadCount,
	voprf.UnknownKey:   pstderr.UnknownKey,
	voprf.InvalidToken: pstderr.InvalidToken,
	voprf.BadProof:     pstderr.BadProof,
	voprf.Unsupported:  pstderr.Unsupported,
	voprf.KeyWiped:     pstderr.Unavailable, // rotated out under a request: retry
}

// fromVOPRF gives a refusal from signer/voprf its pstderr kind; any other
// error stays a plain (internal) error.
func fromVOPRF(err error) error {
	var ve *voprf.Error
	if !errors.As(err, &ve) {
		return err
	}
	k, ok := voprfKinds[ve.Kind]
	if !ok {
		return err
	}
	return pstderr.Wrap(k, err, ve.Detail)
}

// hsmErr counts a failed HSM operation and fails closed: the HSM is a
// dependency that is down or lost its session, so the answer is a 503 and
// readiness reflects it.
func (s *Service) hsmErr(err error, detail string) error {
	s.metrics.hsmErrors.Inc()
	return pstderr.Wrap(pstderr.Unavailable, err, detail)
}

// dbErr counts a failed database operation. package db has already told an
// outage (pstderr Unavailable: 503, fails readiness) from a refusal (another
// kind, e.g. AlreadyRedeemed) and from a bug (a plain error: a 500 that
// leaves readiness alone); dbErr keeps that classification and only adds
// what the service was doing to a bug's message.
func (s *Service) dbErr(err error, detail string) error {
	if k, ok := pstderr.KindOf(err); ok {
		if k == pstderr.Unavailable {
			s.metrics.dbErrors.Inc()
		}
		return err
	}
	s.metrics.dbErrors.Inc()
	return fmt.Errorf("%s: %w", detail, err)
}
