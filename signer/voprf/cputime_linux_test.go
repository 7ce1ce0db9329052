//go:build linux

package voprf

import (
	"syscall"
	"testing"
)

// processCPU returns this process's CPU time (all threads, GC included) in
// nanoseconds.
func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// reportCPU adds cpu-ns/op (and, with batch > 0, tokens per CPU-second) to a
// benchmark that started its clock at start: on a machine shared with other
// work, wall-clock ns/op counts time spent waiting for a core.
func reportCPU(b *testing.B, start int64, batch int) {
	used := float64(processCPU() - start)
	b.ReportMetric(used/float64(b.N), "cpu-ns/op")
	if batch > 0 && used > 0 {
		b.ReportMetric(float64(batch*b.N)/(used/1e9), "tokens/cpu-s")
	}
}
