package secmem

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// mapPage maps one private anonymous page, leaves it out of core dumps
// (a failure there is an error: the point of this package) and tries to
// lock it.
func mapPage() ([]byte, error) {
	page, err := unix.Mmap(-1, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("secmem: mmap: %w", err)
	}
	if err := unix.Madvise(page, unix.MADV_DONTDUMP); err != nil {
		_ = unix.Munmap(page)
		return nil, fmt.Errorf("secmem: madvise(MADV_DONTDUMP): %w", err)
	}
	if err := unix.Mlock(page); err != nil {
		unlocked.Add(1)
	}
	return page, nil
}
