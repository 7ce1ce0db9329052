package httpapi

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

const metricsNamespace = "pstd"

// metrics are the HTTP layer's Prometheus metrics, registered on an injected registry
// (never the global one): requests, issuance and redemption outcomes and
// readiness, what the HTTP layer sees. The issuer service registers its own
// (HSM, database, keys, rotation) where they are measured. No label ever
// carries a client address, a token or a record.
type metrics struct {
	issuance     *prometheus.CounterVec
	tokensIssued prometheus.Counter
	redemptions  *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	ready        prometheus.Gauge

	admissionRejected *prometheus.CounterVec
	inflight          *prometheus.GaugeVec
	connRefused       *prometheus.CounterVec
	openConns         *prometheus.GaugeVec
	probeInconclusive prometheus.Counter
}

// newMetrics creates pstd's metrics and registers them on reg. A collector
// that reg already holds (a second Server on the same registry) is reused.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
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
		admissionRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "admission_rejected_total",
			Help: "Issuance and redemption requests refused at once with 503 overloaded because the route's (or the client's) concurrency was full.",
		}, []string{"route"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "inflight_requests",
			Help: "Issuance and redemption requests running now (admitted).",
		}, []string{"route"}),
		connRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "connections_refused_total",
			Help: "Connections closed on accept because the listener's total or per-address connection cap was reached.",
		}, []string{"listener", "reason"}),
		openConns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "open_connections",
			Help: "Connections open on the listener.",
		}, []string{"listener"}),
		probeInconclusive: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "readiness_probe_timeouts_total",
			Help: "Readiness probes that timed out without an answer from a dependency (readiness changes only after several in a row).",
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
	register(m.admissionRejected, func(c prometheus.Collector) { m.admissionRejected = c.(*prometheus.CounterVec) })
	register(m.inflight, func(c prometheus.Collector) { m.inflight = c.(*prometheus.GaugeVec) })
	register(m.connRefused, func(c prometheus.Collector) { m.connRefused = c.(*prometheus.CounterVec) })
	register(m.openConns, func(c prometheus.Collector) { m.openConns = c.(*prometheus.GaugeVec) })
	register(m.probeInconclusive, func(c prometheus.Collector) { m.probeInconclusive = c.(prometheus.Counter) })
	return m, errors.Join(errs...)
}

func (m *metrics) setReady(ok bool) {
	if ok {
		m.ready.Set(1)
	} else {
		m.ready.Set(0)
	}
}
