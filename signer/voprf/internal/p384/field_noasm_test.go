//go:build !amd64 || purego

package p384

import "testing"

func withEachBackend(t *testing.T, f func(t *testing.T)) { t.Run("generic", f) }

func forEachBackend(f func()) { f() }
