package main

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pstd/pstd/internal/secmem"
)

func TestReadBlob(t *testing.T) {
	blob := bytes.Repeat([]byte{7}, 52)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for name, content := range map[string][]byte{
		"raw":    blob,
		"base64": []byte(base64.StdEncoding.EncodeToString(blob) + "\n"),
	} {
		got, err := readBlob(write(name, content))
		if err != nil || !bytes.Equal(got, blob) {
			t.Errorf("%s: readBlob = %x, %v", name, got, err)
		}
		secmem.Free(got)
	}
	for name, content := range map[string][]byte{
		"short":       blob[:51],
		"not base64":  []byte("not a blob at all, not even base64!"),
		"base64 of 3": []byte(base64.StdEncoding.EncodeToString([]byte{1, 2, 3})),
		"too large":   bytes.Repeat([]byte("A"), secmem.MaxSize+10),
	} {
		if got, err := readBlob(write(strings.ReplaceAll(name, " ", "-"), content)); err == nil {
			t.Errorf("%s: readBlob accepted it: %x", name, got)
		}
	}
	if _, err := readBlob(""); err == nil {
		t.Error("readBlob of no path succeeded")
	}
}
