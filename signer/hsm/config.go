package hsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"runtime"
	"strings"
	"syscall"
	"unsafe"

	"github.com/pstd/pstd/internal/secmem"
)

// Config says which token to use and how to log in.
//
// Config's String, GoString and LogValue never show the PIN, so a Config
// may be printed or logged.
type Config struct {
	// ModulePath is the PKCS#11 module (shared library) to load.
	ModulePath string
	// TokenLabel selects the token. Slots are never chosen by number: slot
	// numbers change when tokens are added or removed.
	TokenLabel string
	// PIN is the token's user PIN. Prefer LoadPIN to fill it from a file.
	PIN string

	// MaxSessions bounds crypto11's session pool (0: 32).
	MaxSessions int
	// Logger receives reconnect events (nil: slog.Default()). The PIN is
	// never logged.
	Logger *slog.Logger
}

// String describes the configuration without the PIN.
func (c Config) String() string {
	pin := "unset"
	if c.PIN != "" {
		pin = "set"
	}
	return fmt.Sprintf("hsm.Config{ModulePath: %q, TokenLabel: %q, PIN: %s}", c.ModulePath, c.TokenLabel, pin)
}

// GoString is String, so %#v does not print the PIN either.
func (c Config) GoString() string { return c.String() }

// LogValue implements slog.LogValuer without the PIN.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("module", c.ModulePath),
		slog.String("token_label", c.TokenLabel),
		slog.Bool("pin_set", c.PIN != ""),
	)
}

// maxPINFile bounds what LoadPIN reads: a PIN is short, a huge file is a
// misconfiguration.
const maxPINFile = 4096

// LoadPIN returns the user PIN from pinFile if it is set (preferred: the
// PIN stays out of the environment and the process listing), else pinEnv,
// the PIN's value taken from the environment (PSTD_PKCS11_PIN). One trailing
// line ending is removed from the file's content. Errors name the file but
// never contain the PIN.
func LoadPIN(pinFile, pinEnv string) (string, error) {
	if pinFile != "" {
		return readPINFile(pinFile)
	}
	if pinEnv == "" {
		return "", ErrNoPIN
	}
	return pinEnv, nil
}

// ErrPINFileExposed: the PIN file is readable by group or others, or owned
// by another user. pstd refuses it rather than use a PIN others may know.
var ErrPINFileExposed = errors.New("hsm: PIN file is exposed")

// checkPINFileMode refuses a PIN file (the open file, so no swap between
// check and read) that group or others may read or write, or that another
// user owns (and so may chmod or rewrite).
func checkPINFileMode(f *os.File, path string) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("hsm: PIN file: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o; allow its owner only (chmod 600)", ErrPINFileExposed, path, perm)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%w: %s is owned by uid %d, not by pstd's uid %d", ErrPINFileExposed, path, st.Uid, os.Geteuid())
	}
	return nil
}

// readPINFile reads the PIN into protected memory (package secmem: out of
// core dumps, locked against swap) and returns it as a string over that
// memory, so no copy of it lands on the Go heap. The memory is never given
// back: the string may live as long as the process.
func readPINFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hsm: PIN file: %w", err)
	}
	defer f.Close()
	if err := checkPINFileMode(f, path); err != nil {
		return "", err
	}
	b, err := secmem.New(maxPINFile)
	if err != nil {
		return "", err
	}
	n, err := io.ReadFull(f, b)
	switch {
	case err == nil:
		var one [1]byte
		if m, _ := f.Read(one[:]); m > 0 {
			secmem.Free(b)
			return "", fmt.Errorf("hsm: PIN file %s is larger than %d bytes", path, maxPINFile)
		}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
	default:
		secmem.Free(b)
		return "", fmt.Errorf("hsm: reading PIN file %s: %w", path, err)
	}
	pin := bytes.TrimSuffix(bytes.TrimSuffix(b[:n], []byte("\n")), []byte("\r"))
	if len(pin) == 0 {
		secmem.Free(b)
		return "", fmt.Errorf("%w: PIN file %s is empty", ErrNoPIN, path)
	}
	return unsafe.String(&pin[0], len(pin)), nil
}

// URI is a parsed RFC 7512 PKCS#11 URI naming a token, e.g.
//
//	pkcs11:token=pstd-dev?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pstd/pin
//
// Supported attributes: token (path), module-path, pin-source (a file path
// or file: URI) and pin-value (query). Any other attribute is refused
// rather than ignored, because pstd selects the token by label only and a
// silently ignored serial or slot-id would select a different token than the
// operator meant.
type URI struct {
	TokenLabel string
	ModulePath string
	PINSource  string // file path, "" if none
	PINValue   string // never printed by String
}

// String renders the URI with pin-value redacted.
func (u URI) String() string {
	var q []string
	if u.ModulePath != "" {
		q = append(q, "module-path="+uriEscape(u.ModulePath))
	}
	if u.PINSource != "" {
		q = append(q, "pin-source="+uriEscape(u.PINSource))
	}
	if u.PINValue != "" {
		q = append(q, "pin-value=REDACTED")
	}
	s := "pkcs11:token=" + uriEscape(u.TokenLabel)
	if len(q) > 0 {
		s += "?" + strings.Join(q, "&")
	}
	return s
}

// GoString is String, so %#v does not print the PIN either.
func (u URI) GoString() string { return u.String() }

// LogValue implements slog.LogValuer without the PIN.
func (u URI) LogValue() slog.Value { return slog.StringValue(u.String()) }

// uriEscape percent-encodes everything outside RFC 7512's unreserved set
// and '/', which is allowed in both path and query values.
func uriEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~/", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// uriError never echoes the URI: it may carry a pin-value.
func uriError(format string, args ...any) error {
	return fmt.Errorf("hsm: PKCS#11 URI: "+format, args...)
}

// ParseURI parses an RFC 7512 PKCS#11 URI. It does not read the PIN file;
// Config does.
func ParseURI(s string) (URI, error) {
	var u URI
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return u, uriError("must start with \"pkcs11:\"")
	}
	path, query, _ := strings.Cut(rest, "?")
	seen := map[string]bool{}
	if path != "" {
		for _, attr := range strings.Split(path, ";") {
			k, v, err := uriAttr(attr)
			if err != nil {
				return URI{}, err
			}
			if seen[k] {
				return URI{}, uriError("attribute %q given twice", k)
			}
			seen[k] = true
			switch k {
			case "token":
				u.TokenLabel = v
			default:
				return URI{}, uriError("path attribute %q is not supported: pstd selects the token by label (token=) only", k)
			}
		}
	}
	if query != "" {
		for _, attr := range strings.Split(query, "&") {
			k, v, err := uriAttr(attr)
			if err != nil {
				return URI{}, err
			}
			if seen["?"+k] {
				return URI{}, uriError("attribute %q given twice", k)
			}
			seen["?"+k] = true
			switch k {
			case "module-path":
				u.ModulePath = v
			case "pin-source":
				src, err := pinSourcePath(v)
				if err != nil {
					return URI{}, err
				}
				u.PINSource = src
			case "pin-value":
				u.PINValue = v
			case "module-name":
				return URI{}, uriError("module-name is not supported; give module-path")
			default:
				return URI{}, uriError("query attribute %q is not supported", k)
			}
		}
	}
	if u.TokenLabel == "" {
		return URI{}, uriError("token= is required")
	}
	if u.PINSource != "" && u.PINValue != "" {
		return URI{}, uriError("give pin-source or pin-value, not both")
	}
	return u, nil
}

func uriAttr(attr string) (string, string, error) {
	k, raw, ok := strings.Cut(attr, "=")
	if !ok || k == "" {
		return "", "", uriError("attribute without a name or '='")
	}
	v, err := url.PathUnescape(raw)
	if err != nil {
		return "", "", uriError("attribute %q: bad percent-encoding", k)
	}
	return k, v, nil
}

// pinSourcePath accepts "file:/path", "file:///path" or a plain path.
func pinSourcePath(v string) (string, error) {
	if v == "" {
		return "", uriError("pin-source is empty")
	}
	if !strings.Contains(v, ":") {
		return v, nil
	}
	pu, err := url.Parse(v)
	if err != nil || pu.Scheme != "file" {
		return "", uriError("pin-source must be a file path or a file: URI")
	}
	if pu.Host != "" && pu.Host != "localhost" {
		return "", uriError("pin-source file: URI must name a local file")
	}
	p := pu.Path
	if p == "" {
		p = pu.Opaque
	}
	if p == "" {
		return "", uriError("pin-source file: URI has no path")
	}
	return p, nil
}

// Config returns the configuration the URI names. The PIN comes from
// pin-value or pin-source if the URI has one, else from LoadPIN(pinFile,
// pinEnv); the module from module-path, else defaultModule.
func (u URI) Config(defaultModule, pinFile, pinEnv string) (Config, error) {
	cfg := Config{ModulePath: u.ModulePath, TokenLabel: u.TokenLabel}
	if cfg.ModulePath == "" {
		cfg.ModulePath = defaultModule
	}
	if cfg.ModulePath == "" {
		return Config{}, fmt.Errorf("%w: the PKCS#11 URI has no module-path", ErrNoModule)
	}
	var err error
	switch {
	case u.PINValue != "":
		cfg.PIN = u.PINValue
	case u.PINSource != "":
		cfg.PIN, err = readPINFile(u.PINSource)
	default:
		cfg.PIN, err = LoadPIN(pinFile, pinEnv)
	}
	if err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// ConfigFromURI is ParseURI followed by URI.Config with no defaults.
func ConfigFromURI(s string) (Config, error) {
	u, err := ParseURI(s)
	if err != nil {
		return Config{}, err
	}
	return u.Config("", "", "")
}

// Wipe overwrites b with zeros. Use it on PINs, unsealed keys and any other
// secret buffer once it is no longer needed. (Copies the Go runtime or a C
// library made earlier are out of its reach.)
func Wipe(b []byte) {
	clear(b)
	runtime.KeepAlive(b)
}

// errorsIsAny reports whether err matches any of targets.
func errorsIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
