//go:build !linux

package voprf

import "testing"

func processCPU() int64                              { return 0 }
func reportCPU(b *testing.B, start int64, batch int) {}
