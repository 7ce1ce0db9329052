package main

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The testdata reports are real pstbench --format json output with their
// labels (and some figures) changed so that every chart has data; bssl.json
// has deploy/perf/bssl.sh's shape.
func TestDrawsEveryChart(t *testing.T) {
	files, err := filepath.Glob("testdata/*.json")
	if err != nil || len(files) == 0 {
		t.Fatal("no testdata", err)
	}
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := realMain(append([]string{"-out", dir}, files...), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	want := []string{"bssl.png", "issue-cost.png", "latency.png", "memory.png", "redeem-history.png", "throughput.png"}
	var got []string
	for _, line := range strings.Fields(stdout.String()) {
		got = append(got, filepath.Base(line))
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("wrote %v, want %v", got, want)
	}
	for _, name := range want {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b := img.Bounds()
		if b.Dx() < 600 || b.Dy() < 300 {
			t.Errorf("%s is %dx%d", name, b.Dx(), b.Dy())
		}
		// Something is drawn: axes, text and at least one coloured series.
		colours := map[[4]uint32]bool{}
		for y := b.Min.Y; y < b.Max.Y; y += 2 {
			for x := b.Min.X; x < b.Max.X; x += 2 {
				r, g, bl, a := img.At(x, y).RGBA()
				colours[[4]uint32{r, g, bl, a}] = true
			}
		}
		if len(colours) < 8 {
			t.Errorf("%s has only %d colours: blank?", name, len(colours))
		}
	}
}

func TestRefusesWhatIsNotAReport(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	empty := filepath.Join(dir, "empty.json")
	os.WriteFile(bad, []byte("{not json"), 0o600)
	os.WriteFile(empty, []byte(`{"tool":"pstbench","phases":[]}`), 0o600)
	for _, f := range []string{bad, empty} {
		var stdout, stderr bytes.Buffer
		if code := realMain([]string{"-out", dir, f}, &stdout, &stderr); code != 1 {
			t.Errorf("%s: exit %d, want 1", f, code)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := realMain([]string{"-out", dir}, &stdout, &stderr); code != 2 {
		t.Errorf("no files: exit %d, want 2", code)
	}
}
