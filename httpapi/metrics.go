package httpapi

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const metricsNamespace = "pstd"

// Metrics are pstd's Prometheus metrics, registered on an injected registry
// (never the global one). The HTTP layer records requests, issuance and
// redemption outcomes and readiness; the issuer service uses the hooks
// (IncHSMError, IncDBError, SetSigningKey, RotationDone). No label ever carries a client
// address, a token or a record.
type Metrics struct {
	issuance     *prometheus.CounterVec
	tokensIssued prometheus.Counter
	redemptions  *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	ready        prometheus.Gauge
	hsmErrors    prometheus.Counter
	dbErrors     prometheus.Counter
	keyEpoch     prometheus.Gauge
	keyExpiry    prometheus.Gauge
	rotationErrs prometheus.Counter
	rotatedAt    prometheus.Gauge
}

// NewMetrics creates pstd's metrics and registers them on reg. A collector
// that reg already holds (a second Server on the same registry) is reused.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		issuance: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "issuance_requests_total",
			Help: "Issuance requests by outcome (issued, or the problem reason).",
		}, []string{"outcome"}),
		tokensIssued: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "tokens_issued_total",
			Help: "Tokens signed and returned to clients.",
		}),
		redemptions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "redemption_requests_total",
			Help: "Redemption requests by outcome (redeemed, or the problem reason).",
		}, []string{"outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Name: "http_request_duration_seconds",
			Help:    "HTTP request latency by route and status code.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route", "code"}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "ready",
			Help: "1 when the database, the HSM and the keys were usable at the last readiness probe.",
		}),
		hsmErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "hsm_errors_total",
			Help: "Failed HSM operations.",
		}),
		dbErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "db_errors_total",
			Help: "Failed database operations.",
		}),
		keyEpoch: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "key_epoch",
			Help: "Key id of the VOPRF key currently signing.",
		}),
		keyExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "signing_key_expiry_timestamp_seconds",
			Help: "When the VOPRF key currently signing expires (Unix time): alert well before it passes with no successor.",
		}),
		rotationErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "rotation_errors_total",
			Help: "Failed runs of the rotation policy or of the key-set reload.",
		}),
		rotatedAt: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "rotation_last_success_timestamp_seconds",
			Help: "When this replica last ran the rotation policy successfully (Unix time).",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	register := func(c prometheus.Collector, set func(prometheus.Collector)) {
		err := reg.Register(c)
		var are prometheus.AlreadyRegisteredError
		switch {
		case err == nil:
		case errors.As(err, &are):
			set(are.ExistingCollector)
		default:
			errs = append(errs, err)
		}
	}
	register(m.issuance, func(c prometheus.Collector) { m.issuance = c.(*prometheus.CounterVec) })
	register(m.tokensIssued, func(c prometheus.Collector) { m.tokensIssued = c.(prometheus.Counter) })
	register(m.redemptions, func(c prometheus.Collector) { m.redemptions = c.(*prometheus.CounterVec) })
	register(m.duration, func(c prometheus.Collector) { m.duration = c.(*prometheus.HistogramVec) })
	register(m.ready, func(c prometheus.Collector) { m.ready = c.(prometheus.Gauge) })
	register(m.hsmErrors, func(c prometheus.Collector) { m.hsmErrors = c.(prometheus.Counter) })
	register(m.dbErrors, func(c prometheus.Collector) { m.dbErrors = c.(prometheus.Counter) })
	register(m.keyEpoch, func(c prometheus.Collector) { m.keyEpoch = c.(prometheus.Gauge) })
	register(m.keyExpiry, func(c prometheus.Collector) { m.keyExpiry = c.(prometheus.Gauge) })
	register(m.rotationErrs, func(c prometheus.Collector) { m.rotationErrs = c.(prometheus.Counter) })
	register(m.rotatedAt, func(c prometheus.Collector) { m.rotatedAt = c.(prometheus.Gauge) })
	return m, errors.Join(errs...)
}

// IncHSMError counts one failed HSM operation.
func (m *Metrics) IncHSMError() { m.hsmErrors.Inc() }

// IncDBError counts one failed database operation.
func (m *Metrics) IncDBError() { m.dbErrors.Inc() }

// SetKeyEpoch records the id of the VOPRF key currently signing.
func (m *Metrics) SetKeyEpoch(keyID uint32) { m.keyEpoch.Set(float64(keyID)) }

// SetSigningKey records the key currently signing and when it expires.
func (m *Metrics) SetSigningKey(keyID uint32, expiry time.Time) {
	m.keyEpoch.Set(float64(keyID))
	m.keyExpiry.Set(float64(expiry.Unix()))
}

// RotationDone records one run of the rotation policy (and reload): err nil
// is a success.
func (m *Metrics) RotationDone(at time.Time, err error) {
	if err != nil {
		m.rotationErrs.Inc()
		return
	}
	m.rotatedAt.Set(float64(at.Unix()))
}

func (m *Metrics) setReady(ok bool) {
	if ok {
		m.ready.Set(1)
	} else {
		m.ready.Set(0)
	}
}
