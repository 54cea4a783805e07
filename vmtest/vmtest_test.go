package vmtest

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"time"
)

func TestParseResults(t *testing.T) {
	console := `[    1.2] random: crng init done
loaded 46 modules in 662ms
=== RUN   TestA
--- PASS: TestA (1.84s)
=== RUN   TestB
    b_test.go:10: something broke
--- FAIL: TestB (0.02s)
=== RUN   TestC
=== RUN   TestC/sub
    --- PASS: TestC/sub (0.00s)
--- SKIP: TestC (0.00s)
    c_test.go:3: not here
=== RUN   TestD
    d_test.go:7: started
[   14.6] BUG: kernel NULL pointer dereference
`
	got := ParseResults(console)
	want := []Result{
		{Name: "TestA", Status: "PASS", Took: 1840 * time.Millisecond, Output: ""},
		{Name: "TestB", Status: "FAIL", Took: 20 * time.Millisecond, Output: "    b_test.go:10: something broke\n"},
		{Name: "TestC", Status: "SKIP", Output: "=== RUN   TestC/sub\n    --- PASS: TestC/sub (0.00s)\n"},
		{Name: "TestC/sub", Status: "PASS"},
		{Name: "TestD", Status: "FAIL", Output: "    d_test.go:7: started\n[   14.6] BUG: kernel NULL pointer dereference\n"},
	}
	// TestC/sub's RUN line is part of its parent's output; compare the rest.
	if len(got) != len(want) {
		t.Fatalf("got %d results %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i].Name != want[i].Name || got[i].Status != want[i].Status {
			t.Errorf("result %d = %s %s, want %s %s", i, got[i].Name, got[i].Status, want[i].Name, want[i].Status)
		}
		if want[i].Took != got[i].Took {
			t.Errorf("%s took %s, want %s", want[i].Name, got[i].Took, want[i].Took)
		}
		if want[i].Name != "TestC/sub" && got[i].Output != want[i].Output {
			t.Errorf("%s output = %q, want %q", want[i].Name, got[i].Output, want[i].Output)
		}
	}
}

func TestExitCode(t *testing.T) {
	for _, c := range []struct {
		console string
		code    int
		ok      bool
	}{
		{"PASS\nSLUICE-VM-EXIT 0\n[ 3.1] reboot: Restarting system\n", 0, true},
		{"FAIL\nSLUICE-VM-EXIT 1\n", 1, true},
		{"=== RUN   TestA\n[ 9.0] Kernel panic\n", 0, false},
		{"SLUICE-VM-EXIT \n", 0, false},
	} {
		code, ok := ExitCode(c.console)
		if code != c.code || ok != c.ok {
			t.Errorf("ExitCode(%q) = %d, %v; want %d, %v", c.console, code, ok, c.code, c.ok)
		}
	}
}

// TestInitramfsFormat reads the archive back with a small newc reader:
// headers, names, padding, modes, device numbers, file contents, trailer.
func TestInitramfsFormat(t *testing.T) {
	src := filepath.Join(t.TempDir(), "prog")
	if err := os.WriteFile(src, []byte("#!/bin/true\nabc"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := NewInitramfs()
	a.File("/init", src, 0o755)
	a.Bytes("/etc/hosts", []byte("127.0.0.1 localhost\n"), 0o644)
	a.Symlink("/var/run", "/run")
	a.Dir("/tmp")
	var buf bytes.Buffer
	n, err := a.WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) || n%4 != 0 {
		t.Fatalf("wrote %d bytes, buffer has %d (must be a multiple of 4)", n, buf.Len())
	}

	type ent struct {
		mode       uint64
		rmaj, rmin uint64
		body       string
	}
	got := map[string]ent{}
	var order []string
	b := buf.Bytes()
	off := 0
	pad := func() { off = (off + 3) &^ 3 }
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad header at %d: %q", off, b[off:min(off+110, len(b))])
		}
		field := func(i int) uint64 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		mode, size, rmaj, rmin, namesize := field(1), field(6), field(9), field(10), field(11)
		name := string(b[off+110 : off+110+int(namesize)-1])
		off += 110 + int(namesize)
		pad()
		body := string(b[off : off+int(size)])
		off += int(size)
		pad()
		if name == "TRAILER!!!" {
			break
		}
		got[name] = ent{mode, rmaj, rmin, body}
		order = append(order, name)
	}
	if off != len(b) {
		t.Fatalf("%d bytes after the trailer", len(b)-off)
	}
	want := map[string]ent{
		"dev":         {sIFDIR | 0o755, 0, 0, ""},
		"dev/console": {sIFCHR | 0o600, 5, 1, ""},
		"etc":         {sIFDIR | 0o755, 0, 0, ""},
		"etc/hosts":   {sIFREG | 0o644, 0, 0, "127.0.0.1 localhost\n"},
		"init":        {sIFREG | 0o755, 0, 0, "#!/bin/true\nabc"},
		"tmp":         {sIFDIR | 0o755, 0, 0, ""},
		"var":         {sIFDIR | 0o755, 0, 0, ""},
		"var/run":     {sIFLNK | 0o777, 0, 0, "/run"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("archive:\n%+v\nwant:\n%+v", got, want)
	}
	seen := map[string]bool{}
	for _, n := range order {
		if d := filepath.Dir(n); d != "." && !seen[d] {
			t.Fatalf("%s comes before its directory %s: %v", n, d, order)
		}
		seen[n] = true
	}
}
