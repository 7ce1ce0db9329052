package signer

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pstd/pstd/signer/voprf"
)

// Defaults of the service's settings. The settings of the binaries take
// these rather than repeating them.
const (
	DefaultBatchSize        = 10
	DefaultRecordLifetime   = 7 * 24 * time.Hour
	DefaultRefreshInterval  = 5 * time.Second
	DefaultRotationInterval = time.Minute
	// DefaultCheckpointInterval bounds how long a change to the audit log
	// or a redemption waits for a signed checkpoint (and the HSM's anchor).
	DefaultCheckpointInterval = 10 * time.Second
	DefaultActor              = "pstd"
)

// Config configures the issuer service. Zero fields take the defaults.
type Config struct {
	IssuerOrigin     string
	BatchSize        int
	RecordLifetime   time.Duration
	Policy           RotationPolicy
	Clock            Clock
	RefreshInterval  time.Duration // how often replicas look for a new key set
	RotationInterval time.Duration // how often the rotation policy runs
	// CheckpointInterval is how often a changed audit log is checkpointed.
	CheckpointInterval time.Duration
	// Redeemers limits which origins may redeem (zero value: any).
	Redeemers Redeemers
	// RegistrationExpiry is when the issuer's registration with Google
	// lapses (zero: not set); exported as a metric for alerting.
	RegistrationExpiry time.Time
	Logger             *slog.Logger
	Actor              string // who the audit log names for automatic changes
	// Replica names this process in its count rows and start/stop events
	// (default host name and process id).
	Replica string
	// CountFlushInterval is how often closed count buckets are flushed
	// (default DefaultCountFlushInterval; at most a minute).
	CountFlushInterval time.Duration
	// Registerer, if set, receives the service's metrics (HSM and
	// database errors, the signing key, rotation outcomes).
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() error {
	if c.IssuerOrigin == "" {
		return errors.New("issuer origin is required")
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.BatchSize < 1 || c.BatchSize > voprf.MaxBatchSize {
		return fmt.Errorf("batch size %d outside [1, %d]", c.BatchSize, voprf.MaxBatchSize)
	}
	if c.RecordLifetime == 0 {
		c.RecordLifetime = DefaultRecordLifetime
	}
	if c.Policy == (RotationPolicy{}) {
		c.Policy = DefaultRotationPolicy()
	}
	if err := c.Policy.Validate(); err != nil {
		return err
	}
	if c.Clock == nil {
		c.Clock = SystemClock{}
	}
	if c.RefreshInterval == 0 {
		c.RefreshInterval = DefaultRefreshInterval
	}
	if c.RotationInterval == 0 {
		c.RotationInterval = DefaultRotationInterval
	}
	if c.CheckpointInterval == 0 {
		c.CheckpointInterval = DefaultCheckpointInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Actor == "" {
		c.Actor = DefaultActor
	}
	if c.Replica == "" {
		c.Replica = defaultReplica()
	}
	if c.CountFlushInterval == 0 {
		c.CountFlushInterval = DefaultCountFlushInterval
	}
	if c.CountFlushInterval < 0 || c.CountFlushInterval > time.Minute {
		return fmt.Errorf("count flush interval %v outside (0, 1m]", c.CountFlushInterval)
	}
	return nil
}
