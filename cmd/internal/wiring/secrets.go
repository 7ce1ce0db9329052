package wiring

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
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
// /proc/PID/environ never held them.
//
// Protect also stops the kernel writing a core dump of the process
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

// maxSecrets bounds what the new image reads from the memfd.
const maxSecrets = 1 << 20

func isSecretVariable(name string) bool {
	for _, s := range SecretVariables {
		if name == s {
			return true
		}
	}
	return false
}

// ScrubEnvironment is the first thing a binary's main does. In a process
// whose environment holds SecretVariables it re-executes the binary without
// them (it does not return then, unless the re-execution fails); in the
// re-executed image it restores them into the runtime's environment only.
// Elsewhere it does nothing.
func ScrubEnvironment() error {
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
// the runtime's environment and closes it.
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
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("reading the secrets memfd: %w", err)
	}
	var buf bytes.Buffer
	defer wipeBuffer(&buf)
	if _, err := buf.ReadFrom(io.LimitReader(f, maxSecrets)); err != nil {
		return fmt.Errorf("reading the secrets memfd: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(buf.Bytes()))
	sc.Buffer(make([]byte, 0, 4096), maxSecrets)
	sc.Split(splitNUL)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), "=")
		if !ok || !isSecretVariable(name) {
			return errors.New("the secrets memfd holds something other than pstd's secret variables")
		}
		if err := os.Setenv(name, value); err != nil {
			return err
		}
	}
	return sc.Err()
}

func splitNUL(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

func wipeBuffer(b *bytes.Buffer) {
	p := b.Bytes()
	clear(p[:cap(p)])
}

// coreLimit is RLIMIT_CORE as the process found it, for AllowCoreDumps.
var coreLimit unix.Rlimit

// Protect makes the process non-dumpable and sets its soft core-size limit
// to 0, so a crash writes no core holding keys or the PIN and no process of
// the same user can read its memory. Call it at the start of main; call
// AllowCoreDumps afterwards to undo it for debugging.
func Protect() error {
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

// AllowCoreDumps undoes Protect (--allow-core-dumps): the process is
// dumpable again with the core-size limit it started with. A core then
// holds the PIN and the keys in memory; use it on test tokens only.
func AllowCoreDumps() error {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &coreLimit); err != nil {
		return fmt.Errorf("RLIMIT_CORE: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_DUMPABLE: %w", err)
	}
	return nil
}
