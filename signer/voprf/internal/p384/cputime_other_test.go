//go:build !linux

package p384

import "testing"

func cpuLoop(b *testing.B, f func()) {
	for b.Loop() {
		f()
	}
}
