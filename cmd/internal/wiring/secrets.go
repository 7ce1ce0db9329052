package wiring

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pstd/pstd/internal/secmem"
)

// Secrets out of the process image.
//
// The kernel keeps the environment a process was started with in its
// memory and shows it in /proc/PID/environ for the process's lifetime;
// os.Unsetenv changes only the runtime's copy. So when a secret-bearing
// variable (SecretVariables) is in the environment at start, the binary
// moves those variables into an anonymous memory file (memfd), which its
// next image inherits as a descriptor, and re-executes itself
// (/proc/self/exe, same arguments) with an environment that lacks them.
// The new image reads them back into the runtime's copy of the
// environment only (where the settings are parsed from, and from where
// they are removed once used), closes the memfd, and goes on: its
// /proc/PID/environ never held them. The PIN does not go into the
// runtime's environment either but into protected memory (restoreSecrets).
//
// SecureProcess also stops the kernel writing a core dump of the process
// (PR_SET_DUMPABLE 0, which also stops other processes of the same user
// attaching with ptrace or reading /proc/PID/mem, and a soft RLIMIT_CORE of
// 0), unless --allow-core-dumps re-enables them for debugging.

// SecretVariables are the environment variables that may carry a secret:
// the PKCS#11 PIN, a connection string with a password, a PKCS#11 URI with
// pin-value, and libpq's password variable (which pgx honours).
var SecretVariables = []string{"PSTD_PKCS11_PIN", "PSTD_DATABASE_URL", "PSTD_PKCS11_URI", "PGPASSWORD"}

// secretsFDVar names the memfd descriptor in the re-executed image. It is
// not a setting: only the binary sets it, for itself.
const secretsFDVar = "PSTD_SECRETS_FD"

// memfdName is the memfd's name, which the new image checks before it
// trusts the descriptor.
const memfdName = "pstd-secrets"

func isSecretVariable(name string) bool {
	for _, s := range SecretVariables {
		if name == s {
			return true
		}
	}
	return false
}

// SecureProcess is the first thing a binary's main does: scrubEnvironment,
// then protect. A binary that holds the PIN or a key (pstd, pstctl) exits
// when it fails.
func SecureProcess() error {
	if err := scrubEnvironment(); err != nil {
		return err
	}
	return protect()
}

// scrubEnvironment is the first step of SecureProcess. In a process
// whose environment holds SecretVariables it re-executes the binary without
// them (it does not return then, unless the re-execution fails); in the
// re-executed image it restores them into the runtime's environment only.
// Elsewhere it does nothing.
func scrubEnvironment() error {
	if v, ok := os.LookupEnv(secretsFDVar); ok {
		_ = os.Unsetenv(secretsFDVar)
		return restoreSecrets(v)
	}
	var keep []string
	var secret bytes.Buffer
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if isSecretVariable(name) {
			secret.WriteString(kv)
			secret.WriteByte(0)
			continue
		}
		keep = append(keep, kv)
	}
	if secret.Len() == 0 {
		return nil
	}
	defer wipeBuffer(&secret)
	if secret.Len() >= secmem.MaxSize { // what restoreSecrets can take
		return fmt.Errorf("the secret variables (%s) take more than %d bytes", strings.Join(SecretVariables, ", "), secmem.MaxSize-1)
	}
	fd, err := unix.MemfdCreate(memfdName, 0) // no MFD_CLOEXEC: the new image inherits it
	if err != nil {
		return fmt.Errorf("moving secrets out of the environment: memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), memfdName)
	if _, err := f.Write(secret.Bytes()); err != nil {
		f.Close()
		return fmt.Errorf("moving secrets out of the environment: %w", err)
	}
	keep = append(keep, secretsFDVar+"="+strconv.Itoa(fd))
	// os.NewFile's finaliser would close fd; keep f reachable until Exec.
	err = syscall.Exec("/proc/self/exe", os.Args, keep)
	f.Close()
	return fmt.Errorf("moving secrets out of the environment: re-executing %s: %w", os.Args[0], err)
}

// restoreSecrets reads the variables from the memfd named by fdText into
// the runtime's environment and closes it. The PIN is the exception: Go's
// environment keeps strings on the heap, and with cgo libc keeps another
// copy that it never frees, so the PIN goes into protected memory (package
// secmem) and the environment gets a placeholder that resolvePIN turns back
// into it. The memfd's bytes are read into protected memory too.
func restoreSecrets(fdText string) error {
	fd, err := strconv.Atoi(fdText)
	if err != nil || fd < 3 {
		return fmt.Errorf("%s=%q is not a descriptor", secretsFDVar, fdText)
	}
	// Trust only the memfd the previous image made.
	if target, err := os.Readlink("/proc/self/fd/" + fdText); err != nil || !strings.HasPrefix(target, "/memfd:"+memfdName) {
		return fmt.Errorf("%s: descriptor %d is not pstd's secrets memfd", secretsFDVar, fd)
	}
	f := os.NewFile(uintptr(fd), memfdName)
	defer f.Close()
	buf, err := secmem.New(secmem.MaxSize)
	if err != nil {
		return err
	}
	defer secmem.Free(buf)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("reading the secrets memfd: %w", err)
	}
	if n == len(buf) {
		return fmt.Errorf("the secret variables take more than %d bytes", secmem.MaxSize)
	}
	for rest := buf[:n]; len(rest) > 0; {
		var kv []byte
		kv, rest, _ = bytes.Cut(rest, []byte{0})
		name, value, ok := bytes.Cut(kv, []byte("="))
		if !ok || !isSecretVariable(string(name)) {
			return errors.New("the secrets memfd holds something other than pstd's secret variables")
		}
		if string(name) == pinVariable && len(value) > 0 {
			if err := holdPIN(value); err != nil {
				return err
			}
			value = []byte(pinPlaceholder)
		}
		if err := os.Setenv(string(name), string(value)); err != nil {
			return err
		}
	}
	return nil
}

// pinVariable is the PIN's environment variable.
const pinVariable = "PSTD_PKCS11_PIN"

// pinPlaceholder stands in the environment for a PIN held in protected
// memory; it is random so that no real PIN can equal it.
var pinPlaceholder = func() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return "pstd-protected-pin:" + hex.EncodeToString(b[:])
}()

// heldPIN is the PIN restoreSecrets moved to protected memory, as a string
// over that memory (never given back: the string lives on in hsm.Config).
var heldPIN string

func holdPIN(value []byte) error {
	mem, err := secmem.Clone(value)
	if err != nil {
		return err
	}
	heldPIN = unsafe.String(&mem[0], len(mem))
	return nil
}

// resolvePIN returns the PIN a setting's value stands for: the protected
// copy for the placeholder, else the value itself.
func resolvePIN(v string) string {
	if v == pinPlaceholder {
		return heldPIN // "" if none is held: no PIN, never the placeholder
	}
	return v
}

func wipeBuffer(b *bytes.Buffer) {
	p := b.Bytes()
	clear(p[:cap(p)])
}

// coreLimit is RLIMIT_CORE as the process found it, for AllowCoreDumps.
var coreLimit unix.Rlimit

// protect makes the process non-dumpable and sets its soft core-size limit
// to 0, so a crash writes no core holding keys or the PIN and no process of
// the same user can read its memory (the second step of SecureProcess);
// AllowCoreDumps undoes it for debugging.
func protect() error {
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &coreLimit); err != nil {
		return fmt.Errorf("RLIMIT_CORE: %w", err)
	}
	lim := coreLimit
	lim.Cur = 0
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &lim); err != nil {
		return fmt.Errorf("RLIMIT_CORE: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_DUMPABLE: %w", err)
	}
	return nil
}

// AllowCoreDumps undoes protect (--allow-core-dumps): the process is
// dumpable again with the core-size limit it started with. A core then
// holds the database password and requests in flight; the PIN and the
// VOPRF scalars stay in memory the kernel leaves out of dumps (secmem).
func AllowCoreDumps() error {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &coreLimit); err != nil {
		return fmt.Errorf("RLIMIT_CORE: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_DUMPABLE: %w", err)
	}
	return nil
}
