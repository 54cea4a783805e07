// Package latency summarizes the round-trip times the bench's latency tools
// (dnslat for UDP, enclat for DoT and DoH) measure, in the one JSON record
// benchrun reads, with one percentile definition for every transport.
package latency

import (
	"slices"
	"time"
)

// Summary is the JSON record a latency tool prints for one target.
type Summary struct {
	Name   string  `json:"name"`
	Addr   string  `json:"addr"`
	Count  int     `json:"count"`
	Errors int     `json:"errors"`
	P50us  float64 `json:"p50_us"`
	P90us  float64 `json:"p90_us"`
	P99us  float64 `json:"p99_us"`
	MeanUs float64 `json:"mean_us"`
}

// Summarize is the summary of rtts (not modified) for target name at addr,
// with errs failed queries.
func Summarize(name, addr string, rtts []time.Duration, errs int) Summary {
	res := Summary{Name: name, Addr: addr, Count: len(rtts), Errors: errs}
	if len(rtts) == 0 {
		return res
	}
	s := slices.Clone(rtts)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	res.P50us = us(Percentile(s, 50))
	res.P90us = us(Percentile(s, 90))
	res.P99us = us(Percentile(s, 99))
	res.MeanUs = us(sum / time.Duration(len(s)))
	return res
}

// Percentile returns the nearest-rank percentile p of sorted s.
func Percentile(s []time.Duration, p float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(s))+0.5) - 1
	rank = max(0, min(rank, len(s)-1))
	return s[rank]
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
