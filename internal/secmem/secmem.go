// Package secmem holds secrets (VOPRF scalars, the PKCS#11 PIN) in memory
// outside the Go heap that the kernel leaves out of core dumps and, where
// the process may lock memory, never writes to swap.
//
// The Go heap is a poor place for a secret: the garbage collector never
// zeroes what it frees, a core dump or /proc/PID/mem read takes all of it,
// and it may be swapped. Memory from secmem is anonymous mmap'd pages marked
// MADV_DONTDUMP (left out of every core, even one written with
// --allow-core-dumps) and mlock'd. mlock needs RLIMIT_MEMLOCK (or
// CAP_IPC_LOCK): when the limit refuses it, the pages stay dump-excluded but
// may be swapped, and Unlocked reports it so the binary can say so.
//
// Pages are carved into slots of a few fixed sizes and never returned to
// the kernel: Free zeroes a slot and keeps it for the next secret of its
// size, so a stale reference reads zeros (or, after reuse, another secret of
// this process) but can never fault, and freeing is cheap enough for a
// fuzz loop.
//
// Why not github.com/awnumar/memguard: importing it sets the process's hard
// core-size limit to 0 at package initialisation (so --allow-core-dumps could
// not work, and no test could show what a core holds), and it panics when
// mlock is refused.
package secmem

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"
)

// slotSizes are the sizes a secret is rounded up to; a page holds a whole
// number of each. The largest bounds what New accepts.
var slotSizes = [...]int{64, 256, 1024, pageSize}

const pageSize = 4096

// MaxSize is the largest secret New accepts.
const MaxSize = 4096

// ErrTooLarge: New was asked for more than MaxSize bytes.
var ErrTooLarge = errors.New("secmem: secret larger than 4096 bytes")

var pool struct {
	sync.Mutex
	free  [len(slotSizes)][][]byte // zeroed slots, each cap == its size
	inUse map[uintptr]int          // every slot handed out: address → size class
}

var unlocked atomic.Int64

// Unlocked reports how many pages could not be locked in memory (the
// kernel refused mlock: RLIMIT_MEMLOCK too low). Those pages are still left
// out of core dumps.
func Unlocked() int64 { return unlocked.Load() }

// New returns n zeroed bytes of protected memory. Give them back with Free.
func New(n int) ([]byte, error) {
	if n < 0 || n > MaxSize {
		return nil, fmt.Errorf("%w: %d", ErrTooLarge, n)
	}
	class := 0
	for slotSizes[class] < n {
		class++
	}
	pool.Lock()
	defer pool.Unlock()
	if len(pool.free[class]) == 0 {
		page, err := mapPage()
		if err != nil {
			return nil, err
		}
		size := slotSizes[class]
		for off := 0; off+size <= len(page); off += size {
			pool.free[class] = append(pool.free[class], page[off:off+size:off+size])
		}
	}
	last := len(pool.free[class]) - 1
	slot := pool.free[class][last]
	pool.free[class] = pool.free[class][:last]
	if pool.inUse == nil {
		pool.inUse = map[uintptr]int{}
	}
	pool.inUse[uintptr(unsafe.Pointer(&slot[0]))] = class
	return slot[:n], nil
}

// Free zeroes b, which New returned, and keeps its slot for reuse. Freeing
// nil does nothing; freeing a slice New did not return, or freeing twice,
// panics (two owners of one slot would read each other's secrets).
func Free(b []byte) {
	if b == nil {
		return
	}
	b = b[:cap(b)]
	pool.Lock()
	defer pool.Unlock()
	addr := uintptr(unsafe.Pointer(&b[0]))
	class, ok := pool.inUse[addr]
	if !ok || slotSizes[class] != cap(b) {
		panic("secmem: Free of memory New did not return, or freed twice")
	}
	delete(pool.inUse, addr)
	clear(b)
	pool.free[class] = append(pool.free[class], b)
}

// Clone copies src into new protected memory.
func Clone(src []byte) ([]byte, error) {
	b, err := New(len(src))
	if err != nil {
		return nil, err
	}
	copy(b, src)
	return b, nil
}
