package secmem

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// vmFlags returns the VmFlags line of the mapping in /proc/self/smaps that
// holds addr: what the kernel will do with it at a core dump.
func vmFlags(t *testing.T, addr uintptr) []string {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no /proc/self/smaps: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	in := false
	for sc.Scan() {
		line := sc.Text()
		if fields := strings.Fields(line); len(fields) > 0 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			lo, hi, _ := strings.Cut(fields[0], "-")
			l, err1 := strconv.ParseUint(lo, 16, 64)
			h, err2 := strconv.ParseUint(hi, 16, 64)
			in = err1 == nil && err2 == nil && uint64(addr) >= l && uint64(addr) < h
			continue
		}
		if in && strings.HasPrefix(line, "VmFlags:") {
			return strings.Fields(strings.TrimPrefix(line, "VmFlags:"))
		}
	}
	t.Fatalf("no mapping holds %#x", addr)
	return nil
}

func contains(flags []string, f string) bool {
	for _, x := range flags {
		if x == f {
			return true
		}
	}
	return false
}

// TestKernelLeavesSecretsOutOfDumps reads what the kernel itself says of the
// memory a secret is in: dd (left out of core dumps), and lo (locked, never
// swapped) when the process may lock memory.
func TestKernelLeavesSecretsOutOfDumps(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Linux only")
	}
	for _, n := range []int{1, 48, 64, 65, 300, 4096} {
		b, err := New(n)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != n {
			t.Fatalf("New(%d) returned %d bytes", n, len(b))
		}
		flags := vmFlags(t, uintptr(unsafe.Pointer(&b[0])))
		if !contains(flags, "dd") {
			t.Errorf("New(%d): mapping flags %v lack dd: a core would hold the secret", n, flags)
		}
		if Unlocked() == 0 && !contains(flags, "lo") {
			t.Errorf("New(%d): mapping flags %v lack lo although mlock succeeded", n, flags)
		}
		// Control: a heap buffer is dumped, so the check above can fail.
		heap := make([]byte, 4096)
		if hf := vmFlags(t, uintptr(unsafe.Pointer(&heap[0]))); contains(hf, "dd") {
			t.Fatalf("control: the Go heap is marked dd (%v); the check proves nothing", hf)
		}
		Free(b)
	}
	t.Logf("pages mlock refused: %d", Unlocked())
}

func TestFreeZeroesAndReuses(t *testing.T) {
	b, err := Clone([]byte("123456"))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "123456" {
		t.Fatalf("Clone = %q", b)
	}
	whole := b[:cap(b)]
	Free(b)
	if !bytes.Equal(whole, make([]byte, len(whole))) {
		t.Fatal("Free left the secret in its slot")
	}
	c, err := New(10)
	if err != nil {
		t.Fatal(err)
	}
	defer Free(c)
	if &c[0] != &whole[0] {
		t.Error("Free did not keep the slot for reuse")
	}
	if !bytes.Equal(c, make([]byte, 10)) {
		t.Error("New returned memory that is not zero")
	}
}

func TestLimits(t *testing.T) {
	if _, err := New(MaxSize + 1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("New(MaxSize+1) = %v, want ErrTooLarge", err)
	}
	if _, err := New(-1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("New(-1) = %v, want ErrTooLarge", err)
	}
	Free(nil)
	b, err := New(48)
	if err != nil {
		t.Fatal(err)
	}
	Free(b)
	func() {
		defer func() {
			if recover() == nil {
				t.Error("a second Free of one slot did not panic")
			}
		}()
		Free(b)
	}()
	defer func() {
		if recover() == nil {
			t.Error("Free of heap memory did not panic")
		}
	}()
	Free(make([]byte, 64))
}

func TestConcurrentUse(t *testing.T) {
	done := make(chan error)
	for g := 0; g < 8; g++ {
		go func(g int) {
			var err error
			for i := 0; i < 500 && err == nil; i++ {
				var b []byte
				if b, err = New(48); err != nil {
					break
				}
				for j := range b {
					b[j] = byte(g)
				}
				for j := range b {
					if b[j] != byte(g) {
						err = fmt.Errorf("slot shared between goroutines")
					}
				}
				Free(b)
			}
			done <- err
		}(g)
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}
