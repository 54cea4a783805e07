package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/sluice-vpn/sluice/gateway"
)

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// printDNSStats prints the proxy's totals, cache and upstream health.
func printDNSStats(w io.Writer, st *gateway.Status) {
	d := st.DNS
	fmt.Fprintf(w, "  queries: %d", d.Queries)
	if len(d.ByRcode) > 0 {
		parts := make([]string, 0, len(d.ByRcode))
		for _, k := range sortedKeys(d.ByRcode) {
			parts = append(parts, fmt.Sprintf("%s %d", k, d.ByRcode[k]))
		}
		fmt.Fprintf(w, " (%s)", strings.Join(parts, ", "))
	}
	fmt.Fprintf(w, "\n  blocked: %d, rate-limited: %d\n", d.Blocked, d.RateLimited)
	hitRate := ""
	if n := d.CacheHits + d.CacheMisses; n > 0 {
		hitRate = fmt.Sprintf(" (%.1f %% hits)", 100*float64(d.CacheHits)/float64(n))
	}
	fmt.Fprintf(w, "  cache: %d entries, %d hits, %d misses%s\n", d.CacheEntries, d.CacheHits, d.CacheMisses, hitRate)
	if len(d.Upstreams) == 0 {
		return
	}
	fmt.Fprintf(w, "  upstreams:\n")
	for _, u := range d.Upstreams {
		state := "healthy"
		if !u.Healthy {
			state = "EJECTED"
		}
		lat := "no answer yet"
		if u.Latency > 0 {
			lat = u.Latency.Round(time.Microsecond).String()
		}
		fmt.Fprintf(w, "    %-14s %-28s %-8s latency %s", u.Group, u.Addr, state, lat)
		if u.Failures > 0 {
			fmt.Fprintf(w, ", %d failures in a row", u.Failures)
		}
		fmt.Fprintln(w)
	}
}
