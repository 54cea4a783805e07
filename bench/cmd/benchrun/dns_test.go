package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// truncateLog empties the everything row's query log between rounds while
// the proxy keeps it open for append: the bytes it held are counted, and the
// writer's next record lands at the start of the emptied file, not after a
// hole.
func TestTruncateLogKeepsAppendWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.json")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(strings.Repeat("x", 100)); err != nil {
		t.Fatal(err)
	}
	if n := truncateLog(path); n != 100 {
		t.Fatalf("truncateLog = %d bytes, want 100", n)
	}
	if _, err := f.WriteString("next\n"); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "next\n" {
		t.Fatalf("file after truncate and write = %q, want %q", got, "next\n")
	}
	if n := truncateLog(filepath.Join(t.TempDir(), "missing")); n != 0 {
		t.Fatalf("truncateLog of a missing file = %d, want 0", n)
	}
}
