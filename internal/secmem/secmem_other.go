//go:build !linux

package secmem

// mapPage falls back to the Go heap where pstd has no way to keep memory
// out of dumps; pstd is built and supported on Linux.
func mapPage() ([]byte, error) {
	unlocked.Add(1)
	return make([]byte, 4096), nil
}
