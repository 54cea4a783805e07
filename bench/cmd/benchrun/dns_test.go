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

// missRound turns one dnslat miss result into the added latencies and
// sluice's differences to dnsdist and unbound (sluice − anchor, which is
// the difference of their added latencies).
func TestMissRound(t *testing.T) {
	servers := []*dnsServer{{name: "sluice", p: &proc{}}, {name: "dnsdist", p: &proc{}}, {name: "unbound", p: &proc{}}}
	res := map[string]latResult{
		"direct":  {Name: "direct", Count: 10, P50us: 50, P99us: 100},
		"sluice":  {Name: "sluice", Count: 10, P50us: 120, P99us: 200},
		"dnsdist": {Name: "dnsdist", Count: 10, P50us: 110, P99us: 230},
		"unbound": {Name: "unbound", Count: 10, P50us: 130, P99us: 180},
	}
	d50, d99 := &series{}, &series{}
	add50, add99 := map[string]*series{}, map[string]*series{}
	for _, s := range servers {
		add50[s.name], add99[s.name] = &series{}, &series{}
	}
	dd50, dd99, ub50, ub99 := &series{}, &series{}, &series{}, &series{}
	d, ok := missRound(servers, res, nil, d50, d99, add50, add99, dd50, dd99, ub50, ub99)
	if !ok || d.P50us != 50 {
		t.Fatalf("missRound = %+v, %v", d, ok)
	}
	for _, c := range []struct {
		name string
		s    *series
		want float64
	}{
		{"direct p50", d50, 50}, {"direct p99", d99, 100},
		{"sluice added p50", add50["sluice"], 70}, {"dnsdist added p99", add99["dnsdist"], 130},
		{"sluice − dnsdist p50", dd50, 10}, {"sluice − dnsdist p99", dd99, -30},
		{"sluice − unbound p50", ub50, -10}, {"sluice − unbound p99", ub99, 20},
	} {
		if len(c.s.vals) != 1 || c.s.vals[0] != c.want {
			t.Errorf("%s = %v, want [%v]", c.name, c.s.vals, c.want)
		}
	}

	// no direct answers: no values, a reason on the direct and difference rows
	delete(res, "direct")
	d50, dd50 = &series{}, &series{}
	if _, ok := missRound(servers, res, nil, d50, &series{}, add50, add99, dd50, &series{}, &series{}, &series{}); ok {
		t.Fatal("missRound without direct answers reported ok")
	}
	if len(d50.vals) != 0 || d50.na == "" || dd50.na == "" {
		t.Errorf("without direct answers: direct %+v, difference %+v", d50, dd50)
	}
}
