package systemd_test

// TestUnitsRunUnderSystemd runs the shipped units under a real systemd, as
// PID 1 of a podman container whose Debian root mmdebstrap builds, against a
// real PostgreSQL database and SoftHSM2 token of the test stack. It proves
// what the exposure score cannot: that the sandbox leaves pstd able to reach
// its database and HSM, and that the credentials reach it.

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pstd/pstd/deploy/internal/pstclient"
	"github.com/pstd/pstd/internal/testenv"
)

// ctr runs commands in one podman container.
type ctr struct {
	t    *testing.T
	conf string // CONTAINERS_CONF
	name string
}

func (c *ctr) podman(stdin []byte, args ...string) (string, error) {
	cmd := exec.Command("podman", args...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+c.conf)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("podman %s: %v: %s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), nil
}

// sh runs a shell script in the container and fails the test on error.
func (c *ctr) sh(script string) string {
	c.t.Helper()
	out, err := c.podman(nil, "exec", c.name, "/bin/sh", "-euc", script)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// write puts a file into the container (mode as for chmod).
func (c *ctr) write(path, mode string, body []byte) {
	c.t.Helper()
	if _, err := c.podman(body, "exec", "-i", c.name, "/bin/sh", "-euc",
		fmt.Sprintf("mkdir -p %q && cat >%q && chmod %s %q", filepath.Dir(path), path, mode, path)); err != nil {
		c.t.Fatal(err)
	}
}

// rootMaxAge bounds how long a cached Debian root is reused.
const rootMaxAge = 7 * 24 * time.Hour

// debianRoot returns a tarball of a minimal Debian root with systemd and
// SoftHSM2 (the release this machine runs, from its apt sources), built by
// mmdebstrap and cached in deploy/systemd/.cache/ (gitignored) for a week:
// building it takes a minute or more, and it is only the test's host.
func debianRoot(t *testing.T) string {
	t.Helper()
	codename := ""
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VERSION_CODENAME="); ok {
				codename = strings.Trim(v, `"`)
			}
		}
	}
	if codename == "" {
		t.Fatal("no VERSION_CODENAME in /etc/os-release")
	}
	cache, err := filepath.Abs(".cache")
	if err != nil {
		t.Fatal(err)
	}
	tar := filepath.Join(cache, "systemd-root-"+codename+".tar")
	if st, err := os.Stat(tar); err == nil && time.Since(st.ModTime()) < rootMaxAge {
		return tar
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(cache, testenv.RandomName("tmp-")+".tar")
	defer os.Remove(tmp)
	args := []string{"--variant=minbase", "--include=systemd,systemd-sysv,dbus,softhsm2", "--mode=root", "--quiet", codename, tmp}
	// The machine's own Debian sources (mirror, security updates), so the
	// root's SoftHSM2 reads the tokens this machine's softhsm2-util wrote.
	if _, err := os.Stat("/etc/apt/sources.list.d/debian.sources"); err == nil {
		args = append(args, "/etc/apt/sources.list.d/debian.sources")
	}
	t0 := time.Now()
	if out, err := exec.Command("mmdebstrap", args...).CombinedOutput(); err != nil {
		t.Fatalf("mmdebstrap: %v\n%s", err, out)
	}
	if err := os.Rename(tmp, tar); err != nil {
		t.Fatal(err)
	}
	t.Logf("Debian %s root with systemd built in %.1fs (cached in %s)", codename, time.Since(t0).Seconds(), tar)
	return tar
}

func TestUnitsRunUnderSystemd(t *testing.T) {
	if os.Geteuid() != 0 {
		if required() {
			t.Fatal("needs root (podman with systemd as PID 1, mmdebstrap)")
		}
		t.Skip("needs root; run make test")
	}
	for _, c := range []string{"podman", "runc", "mmdebstrap"} {
		if _, err := exec.LookPath(c); err != nil {
			if required() {
				t.Fatalf("%s not installed (deploy/dev/deps.sh installs it)", c)
			}
			t.Skipf("%s not installed; run make test", c)
		}
	}
	conf, err := filepath.Abs("../image/containers.conf")
	if err != nil {
		t.Fatal(err)
	}
	dbURL := testenv.NewDatabase(t)
	tok := testenv.NewToken(t)
	bin := buildPstd(t)
	tar := debianRoot(t)

	c := &ctr{t: t, conf: conf, name: testenv.RandomName("pstd-systemd-test-")}
	image := "localhost/" + c.name + ":root"
	if _, err := c.podman(nil, "import", "--quiet", tar, image); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = c.podman(nil, "rmi", "--force", image) })

	// The host's test token, at the path a site would give SoftHSM2 for pstd.
	tokens := filepath.Join(filepath.Dir(tok.Conf), "tokens")
	if _, err := c.podman(nil, "run", "--detach", "--name", c.name,
		// systemd as PID 1 sets up each unit's user and mount namespaces,
		// credentials and seccomp filter: it needs the privileges it has on
		// a real host (with podman's default capabilities and masks it
		// cannot set up PrivateUsers=).
		"--privileged", "--systemd=always", "--network", "host",
		"-v", bin+":/usr/bin/pstd:ro",
		"-v", tokens+":/var/lib/pstd/tokens",
		image, "/sbin/init",
		// A privileged container could change the host through these boot
		// units (kernel variables and modules, mounts, trims, clocks); none
		// is needed here, so they are masked (systemd in a container takes
		// its "kernel command line" from its arguments).
		"systemd.mask=systemd-sysctl.service",
		"systemd.mask=systemd-modules-load.service",
		"systemd.mask=systemd-remount-fs.service",
		"systemd.mask=systemd-binfmt.service",
		"systemd.mask=systemd-pstore.service",
		"systemd.mask=systemd-timesyncd.service",
		"systemd.mask=fstrim.timer",
		"systemd.mask=e2scrub_reap.service",
		"systemd.mask=e2scrub_all.timer",
		"systemd.mask=apt-daily.timer",
		"systemd.mask=apt-daily-upgrade.timer",
		"systemd.mask=dpkg-db-backup.timer",
		"systemd.mask=getty.target",
	); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := c.podman(nil, "exec", c.name, "journalctl", "--no-pager", "-u", "pstd-migrate", "-u", "pstd")
			t.Logf("journal:\n%s", out)
		}
		_, _ = c.podman(nil, "rm", "--force", "--time", "5", c.name)
	})
	// Wait for boot; "degraded" is fine (a unit of the minimal root may fail).
	c.sh(`for i in $(seq 1 150); do
		s=$(systemctl is-system-running 2>/dev/null || true)
		case $s in running|degraded) exit 0;; esac
		sleep 0.2
	done
	echo "systemd did not finish booting: $s" >&2; exit 1`)
	// A host's systemd makes / a shared mount at boot; podman gives the
	// container a private one, and credentials mounted in a unit's own
	// namespace would not propagate. Make it what a host has.
	c.sh(`mount --make-rshared /`)
	// The masks above took: nothing that could touch the host ran.
	if got := c.sh(`systemctl is-enabled systemd-sysctl.service fstrim.timer || true`); got != "masked-runtime\nmasked-runtime\n" {
		t.Fatalf("boot units not masked: %q", got)
	}

	// Install as deploy/README.md says.
	for _, f := range []struct{ src, dst string }{
		{"pstd.service", "/etc/systemd/system/pstd.service"},
		{"pstd-migrate.service", "/etc/systemd/system/pstd-migrate.service"},
		{"pstd.sysusers", "/usr/lib/sysusers.d/pstd.conf"},
	} {
		c.write(f.dst, "0644", []byte(readUnit(t, f.src)))
	}
	c.sh(`systemd-sysusers`)
	uid, err := strconv.Atoi(strings.TrimSpace(c.sh(`id -u pstd`)))
	if err != nil || uid == 0 {
		t.Fatalf("pstd user: uid %d, %v", uid, err)
	}
	// The token store belongs to the service's user.
	if err := filepath.Walk(tokens, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, uid)
	}); err != nil {
		t.Fatal(err)
	}

	port := testenv.FreePort(t)
	origin := fmt.Sprintf("http://localhost:%d", port)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	c.write("/etc/pstd/softhsm2.conf", "0644", []byte("directories.tokendir = /var/lib/pstd/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"))
	c.write("/etc/pstd/pstd.env", "0640", fmt.Appendf(nil,
		"PSTD_ISSUER_ORIGIN=%s\nPSTD_LISTEN=127.0.0.1:%d\nPSTD_PKCS11_MODULE=%s\nPSTD_PKCS11_TOKEN_LABEL=%s\nSOFTHSM2_CONF=/etc/pstd/softhsm2.conf\n",
		origin, port, testenv.SoftHSMModule, tok.Label))
	c.sh(`chgrp pstd /etc/pstd/pstd.env; install -d -m 0700 /etc/pstd/credentials`)
	c.write("/etc/pstd/credentials/pkcs11-pin", "0600", []byte(tok.PIN+"\n"))
	c.write("/etc/pstd/credentials/database-url", "0600", []byte(dbURL+"\n"))
	// Site drop-ins: SoftHSM2 writes its token store (deploy/README.md).
	c.write("/etc/systemd/system/pstd.service.d/softhsm.conf", "0644", []byte("[Service]\nReadWritePaths=/var/lib/pstd/tokens\n"))
	// The units hand pstd the database URL as a credential through
	// PSTD_DATABASE_URL_FILE (issue 14). A pstd without that setting gets
	// the URL (the test cluster's, without a password) inline from a
	// drop-in instead; drop this fallback once every branch has it.
	if help, _ := exec.Command(bin, "migrate", "--help").CombinedOutput(); !strings.Contains(string(help), "-database-url-file") {
		t.Log("pstd has no PSTD_DATABASE_URL_FILE yet: the database URL goes inline in a drop-in")
		for _, u := range []string{"pstd", "pstd-migrate"} {
			c.write("/etc/systemd/system/"+u+".service.d/database-url.conf", "0644",
				[]byte("[Service]\nEnvironment=PSTD_DATABASE_URL="+dbURL+"\n"))
		}
	}
	c.sh(`systemctl daemon-reload && systemctl start pstd.service`)

	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pstd under systemd not ready after 60s: %s", c.sh(`systemctl status --no-pager pstd.service || true`))
		}
		time.Sleep(250 * time.Millisecond)
	}

	// The migration ran first, as its own oneshot, successfully.
	if got := c.sh(`systemctl show -P Result pstd-migrate.service; systemctl show -P ActiveState pstd-migrate.service`); got != "success\nactive\n" {
		t.Errorf("pstd-migrate.service: %q, want success and active", got)
	}
	// The sandbox is in force on the serving process.
	pid := strings.TrimSpace(c.sh(`systemctl show -P MainPID pstd.service`))
	status := c.sh(`cat /proc/` + pid + `/status`)
	field := func(k string) string {
		for _, l := range strings.Split(status, "\n") {
			if v, ok := strings.CutPrefix(l, k+":"); ok {
				return strings.TrimSpace(v)
			}
		}
		t.Fatalf("no %s in /proc/%s/status", k, pid)
		return ""
	}
	if want := fmt.Sprintf("%d\t%d\t%d\t%d", uid, uid, uid, uid); field("Uid") != want {
		t.Errorf("pstd runs as Uid %q, want %q", field("Uid"), want)
	}
	for k, want := range map[string]string{"NoNewPrivs": "1", "Seccomp": "2", "CapEff": "0000000000000000", "CapBnd": "0000000000000000"} {
		if got := field(k); got != want {
			t.Errorf("pstd %s = %s, want %s", k, got, want)
		}
	}
	// The PIN reached pstd as a credential, not through its environment.
	env := c.sh(`tr '\0' '\n' </proc/` + pid + `/environ`)
	if strings.Contains(env, tok.PIN) || !strings.Contains(env, "PSTD_PKCS11_PIN_FILE=/run/credentials/pstd.service/pkcs11-pin") {
		t.Error("the PIN is in pstd's environment, or PSTD_PKCS11_PIN_FILE does not name the credential")
	}

	if _, _, _, err := pstclient.New(base).RoundTrip(origin, "https://rp.example", 2); err != nil {
		t.Fatal(err)
	}

	// The PIN and the keys are in pages the kernel leaves out of core dumps
	// (dd) and, under LimitMEMLOCK, keeps locked (lo): what smaps says. (The
	// kernel's [vvar] and libc's getrandom state are dd too, never lo.)
	locked := false
	for _, line := range strings.Split(c.sh(`grep VmFlags /proc/`+pid+`/smaps`), "\n") {
		flags := strings.Fields(strings.TrimPrefix(line, "VmFlags:"))
		locked = locked || slices.Contains(flags, "dd") && slices.Contains(flags, "lo")
	}
	if !locked {
		t.Error("pstd under systemd has no locked mapping left out of dumps: the PIN and keys are not in protected memory")
	}

	// No secret in the journal.
	if j := c.sh(`journalctl --no-pager -o cat -u pstd-migrate.service -u pstd.service`); strings.Contains(j, tok.PIN) || !strings.Contains(j, "ready") || strings.Contains(j, "refused to lock") {
		t.Error("the journal holds the PIN, or pstd never logged that it is ready, or it could not lock the memory of its secrets")
	}

	// A clean stop: SIGTERM, drain, exit status 0.
	c.sh(`systemctl stop pstd.service`)
	if got := c.sh(`systemctl show -P Result pstd.service; systemctl show -P ExecMainStatus pstd.service`); got != "success\n0\n" {
		t.Errorf("pstd.service after stop: %q, want success and status 0", got)
	}
}
