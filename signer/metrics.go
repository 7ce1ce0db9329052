package signer

import (
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are what the service measures: failures of its two dependencies,
// the key that signs, and the rotation loop. They are registered on the
// Registerer the caller injects (never the global one); without one they
// count into collectors nobody reads. No label carries a token, a record or
// a client.
type metrics struct {
	hsmErrors    prometheus.Counter
	dbErrors     prometheus.Counter
	keyEpoch     prometheus.Gauge
	keyExpiry    prometheus.Gauge
	rotationErrs prometheus.Counter
	rotatedAt    prometheus.Gauge

	integrityViolations prometheus.Counter

	nextRotation       prometheus.Gauge
	successor          prometheus.Gauge
	registrationExpiry prometheus.Gauge
	issuedByKey        *prometheus.CounterVec
	redeemedByKey      *prometheus.CounterVec
	// countsPending is how many count buckets wait in memory for a flush:
	// what a crash would lose (counts.go).
	countsPending prometheus.Gauge
}

// keyLabel bounds the key_id label to the keys loaded (at most a handful
// live at once); anything else is "other".
func keyLabel(ks *keySet, id uint32) string {
	if ks != nil {
		if _, ok := ks.keys[id]; ok {
			return strconv.FormatUint(uint64(id), 10)
		}
	}
	return "other"
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		hsmErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pstd", Name: "hsm_errors_total",
			Help: "Failed HSM operations.",
		}),
		dbErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pstd", Name: "db_errors_total",
			Help: "Failed database operations.",
		}),
		keyEpoch: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pstd", Name: "key_epoch",
			Help: "Key id of the VOPRF key currently signing.",
		}),
		keyExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pstd", Name: "signing_key_expiry_timestamp_seconds",
			Help: "When the VOPRF key currently signing expires (Unix time): alert well before it passes with no successor.",
		}),
		rotationErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pstd", Name: "rotation_errors_total",
			Help: "Failed runs of the rotation policy or of the key-set reload.",
		}),
		rotatedAt: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pstd", Name: "rotation_last_success_timestamp_seconds",
			Help: "When this replica last ran the rotation policy successfully (Unix time).",
		}),
		nextRotation: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pstd", Name: "next_rotation_timestamp_seconds",
			Help: "When the next VOPRF key must start signing (Unix time).",
		}),
		successor: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pstd", Name: "successor_key_published",
			Help: "1 when the key that signs next is already published; alert when 0 a few days before the next rotation.",
		}),
		registrationExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pstd", Name: "registration_expiry_timestamp_seconds",
			Help: "When the issuer's registration with Google lapses (PSTD_REGISTRATION_EXPIRES; 0 if unset).",
		}),
		issuedByKey: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pstd", Name: "key_tokens_issued_total",
			Help: "Tokens issued, by signing key.",
		}, []string{"key_id"}),
		redeemedByKey: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pstd", Name: "key_redemptions_total",
			Help: "Redemption attempts by the token's key and outcome (redeemed, replayed, unknown-key, expired-key, invalid, refused).",
		}, []string{"key_id", "outcome"}),
		integrityViolations: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pstd", Name: "integrity_violations_total",
			Help: "Stored keys, record keys or commitments that failed a check against the HSM: alert on any.",
		}),
		countsPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pstd", Name: "count_buckets_pending",
			Help: "Issuance and refusal count buckets held in memory, not yet on the audit log (a crash loses them).",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.hsmErrors, m.dbErrors, m.keyEpoch, m.keyExpiry, m.rotationErrs, m.rotatedAt, m.integrityViolations,
		m.nextRotation, m.successor, m.registrationExpiry, m.issuedByKey, m.redeemedByKey, m.countsPending} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	return m, errors.Join(errs...)
}

func (m *metrics) signingKey(keyID uint32, expiry time.Time) {
	m.keyEpoch.Set(float64(keyID))
	m.keyExpiry.Set(float64(expiry.Unix()))
}

func (m *metrics) rotationDone(at time.Time, err error) {
	if err != nil {
		m.rotationErrs.Inc()
		return
	}
	m.rotatedAt.Set(float64(at.Unix()))
}
