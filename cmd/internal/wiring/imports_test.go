package wiring

import (
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/pstd/pstd"

// TestImportGraph holds the boundaries of docs/ARCHITECTURE.md against the
// import graph that go list reports: every "must not" there is a test here.
func TestImportGraph(t *testing.T) {
	cmd := exec.Command("go", "list", "-json=ImportPath,Imports", module+"/...")
	cmd.Dir = "../../.."
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	imports := map[string][]string{} // package -> pstd packages it imports
	dec := json.NewDecoder(out)
	for {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		for _, i := range p.Imports {
			if strings.HasPrefix(i, module) {
				imports[strings.TrimPrefix(p.ImportPath, module+"/")] = append(imports[strings.TrimPrefix(p.ImportPath, module+"/")], strings.TrimPrefix(i, module+"/"))
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if len(imports) < 5 {
		t.Fatalf("go list found too few packages: %v", imports)
	}
	// The parts a composition root wires together.
	wired := []string{"db", "signer", "signer/hsm", "httpapi"}
	isRoot := func(p string) bool { return strings.HasPrefix(p, "cmd/") }
	for pkg, deps := range imports {
		var parts []string
		for _, d := range deps {
			if slices.Contains(wired, d) {
				parts = append(parts, d)
			}
		}
		if len(parts) > 1 && !isRoot(pkg) && pkg != "signer" && !strings.HasPrefix(pkg, "e2e") {
			t.Errorf("%s imports %v: only cmd/ and its composition root wire parts together", pkg, parts)
		}
		for _, d := range deps {
			if d == "cmd/internal/wiring" && !isRoot(pkg) {
				t.Errorf("%s imports the composition root", pkg)
			}
		}
	}
	mustNot := map[string][]string{
		"signer/voprf":     {"*"},
		"internal/pstderr": {"*"},
		"internal/secmem":  {"*"},
		"auditlog":         {"*"},
		"rp":               {"signer", "signer/hsm", "signer/voprf", "db", "httpapi", "internal/pstderr"},
		"httpapi":          {"db", "signer", "signer/hsm"},
		"signer":           {"signer/hsm", "httpapi"},
		"signer/hsm":       {"db", "httpapi", "signer"},
		"db":               {"signer", "signer/hsm", "httpapi"},
	}
	for pkg, banned := range mustNot {
		for _, d := range imports[pkg] {
			if strings.HasPrefix(d, pkg+"/internal/") {
				continue // its own internals
			}
			if d == "internal/secmem" {
				continue // a leaf: protected memory for secrets, for anyone
			}
			if slices.Contains(banned, "*") || slices.Contains(banned, d) {
				t.Errorf("%s must not import %s", pkg, d)
			}
		}
	}
	// No leaf package shares a folder with the composition root.
	for pkg := range imports {
		if strings.HasPrefix(pkg, "cmd/internal/") && pkg != "cmd/internal/wiring" {
			t.Errorf("%s sits beside the composition root", pkg)
		}
	}
}

// TestProtocolReferences: the code cites the protocol as the repository
// describes it (docs/PROTOCOL.md), never a document outside the checkout.
func TestProtocolReferences(t *testing.T) {
	root := "../../.."
	doc := "PROTOCOL" + ".md"
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == ".pstd" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, doc) && !strings.Contains(line, "docs/"+doc) {
				t.Errorf("%s:%d cites %s outside docs/: %s", path, i+1, doc, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "docs", doc)); err != nil {
		t.Fatal(err)
	}
}
