package latency

import (
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 100; i++ {
		s = append(s, time.Duration(i)*time.Microsecond)
	}
	for p, want := range map[float64]time.Duration{50: 50 * time.Microsecond, 99: 99 * time.Microsecond, 100: 100 * time.Microsecond, 0: time.Microsecond} {
		if got := Percentile(s, p); got != want {
			t.Errorf("Percentile(%v) = %v, want %v", p, got, want)
		}
	}
	if got := Percentile(nil, 50); got != 0 {
		t.Errorf("Percentile(nil) = %v", got)
	}
}

func TestSummarize(t *testing.T) {
	rtts := []time.Duration{3 * time.Microsecond, time.Microsecond, 2 * time.Microsecond}
	got := Summarize("sluice", "127.0.0.1:53", rtts, 1)
	want := Summary{Name: "sluice", Addr: "127.0.0.1:53", Count: 3, Errors: 1, P50us: 2, P90us: 3, P99us: 3, MeanUs: 2}
	if got != want {
		t.Errorf("Summarize = %+v, want %+v", got, want)
	}
	if rtts[0] != 3*time.Microsecond {
		t.Error("Summarize sorted its input")
	}
}
