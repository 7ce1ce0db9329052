package httpapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// CertReloader serves the certificate and key in two PEM files and picks up
// new ones without a restart and without dropping connections: Watch polls
// the files' modification times, and Reload (on SIGHUP) rereads them at
// once. A pair that does not load is logged and the previous certificate
// stays in use, so a half-written renewal never takes the listener down.
type CertReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu              sync.RWMutex
	cert            *tls.Certificate
	certMod, keyMod time.Time
}

// NewCertReloader loads the pair once; an unusable pair is an error, so a
// misconfigured listener stops pstd at start.
func NewCertReloader(certFile, keyFile string, log *slog.Logger) (*CertReloader, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("TLS needs both a certificate and a key file")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &CertReloader{certFile: certFile, keyFile: keyFile, log: log}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload rereads the files. On failure the previous certificate stays.
func (r *CertReloader) Reload() error {
	cm, km, err := r.modTimes()
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("TLS certificate %s / key %s: %w", r.certFile, r.keyFile, err)
	}
	r.mu.Lock()
	r.cert, r.certMod, r.keyMod = &cert, cm, km
	r.mu.Unlock()
	if cert.Leaf != nil {
		r.log.Info("TLS certificate loaded", "subject", cert.Leaf.Subject.String(), "not_after", cert.Leaf.NotAfter)
	}
	return nil
}

func (r *CertReloader) modTimes() (time.Time, time.Time, error) {
	ci, err := os.Stat(r.certFile)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("TLS certificate: %w", err)
	}
	ki, err := os.Stat(r.keyFile)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("TLS key: %w", err)
	}
	return ci.ModTime(), ki.ModTime(), nil
}

// Watch reloads whenever either file's modification time changes, checking
// every interval, until ctx ends.
func (r *CertReloader) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cm, km, err := r.modTimes()
		if err != nil {
			r.log.Error("TLS files unreadable; keeping the current certificate", "err", err)
			continue
		}
		r.mu.RLock()
		changed := !cm.Equal(r.certMod) || !km.Equal(r.keyMod)
		r.mu.RUnlock()
		if !changed {
			continue
		}
		if err := r.Reload(); err != nil {
			r.log.Error("TLS certificate changed but does not load; keeping the current one", "err", err)
		}
	}
}

// GetCertificate is for tls.Config.
func (r *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cert, nil
}

// TLSConfig is the public listener's TLS: 1.2 at least, HTTP/2 and
// HTTP/1.1 by ALPN, the certificate from r.
func (r *CertReloader) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.GetCertificate,
		NextProtos:     []string{"h2", "http/1.1"},
	}
}
