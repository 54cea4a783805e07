package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// series is one figure measured once per round.
type series struct {
	vals []float64
	na   string // why there is no value (or why some rounds are missing)
}

func (s *series) add(v float64) { s.vals = append(s.vals, v) }

// fail records why a round produced no value; the first reason is kept.
func (s *series) fail(reason string) {
	if s.na == "" {
		s.na = reason
	}
}

// stats returns median, min and max; ok is false when there is no value.
func (s *series) stats() (med, lo, hi float64, ok bool) {
	if len(s.vals) == 0 {
		return 0, 0, 0, false
	}
	v := slices.Clone(s.vals)
	slices.Sort(v)
	n := len(v)
	med = v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return med, v[0], v[n-1], true
}

// target is a goal a figure's median is checked against.
type target struct {
	text string             // e.g. "≥ 1.00×"
	met  func(float64) bool // nil: informational only
	miss func(float64) string
}

func atLeast(goal float64, unit string) *target {
	return &target{
		text: fmt.Sprintf("≥ %s%s", num(goal), unit),
		met:  func(v float64) bool { return v >= goal },
		miss: func(v float64) string { return fmt.Sprintf("short by %s%s", num(goal-v), unit) },
	}
}

func atMost(goal float64, unit string) *target {
	return &target{
		text: fmt.Sprintf("≤ %s%s", num(goal), unit),
		met:  func(v float64) bool { return v <= goal },
		miss: func(v float64) string { return fmt.Sprintf("over by %s%s", num(v-goal), unit) },
	}
}

// row is one line of the result table.
type row struct {
	figure string
	unit   string
	s      *series
	goal   *target
	rounds int // rounds planned, to show missing ones
}

// table renders rows as one Markdown table.
func table(rows []row) string {
	var b strings.Builder
	b.WriteString("| Figure | Median | Min–max | Runs | Target |\n")
	b.WriteString("|---|---:|---:|---:|---|\n")
	for _, r := range rows {
		med, lo, hi, ok := r.s.stats()
		if !ok {
			reason := r.s.na
			if reason == "" {
				reason = "not measured"
			}
			goal := ""
			if r.goal != nil {
				goal = r.goal.text
			}
			fmt.Fprintf(&b, "| %s | n/a (%s) | | 0/%d | %s |\n", r.figure, mdEscape(reason), r.rounds, goal)
			continue
		}
		runs := fmt.Sprintf("%d/%d", len(r.s.vals), r.rounds)
		goal := ""
		if r.goal != nil {
			goal = r.goal.text
			if r.goal.met != nil {
				if r.goal.met(med) {
					goal += " — met"
				} else {
					goal += " — **missed**, " + r.goal.miss(med)
				}
			}
		}
		if r.s.na != "" && len(r.s.vals) < r.rounds {
			runs += " (" + mdEscape(r.s.na) + ")"
		}
		fmt.Fprintf(&b, "| %s | %s%s | %s–%s | %s | %s |\n", r.figure, num(med), r.unit, num(lo), num(hi), runs, goal)
	}
	return b.String()
}

func mdEscape(s string) string {
	s = strings.ReplaceAll(s, "|", "/")
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 100 {
		s = s[:97] + "..."
	}
	return s
}

// num formats a figure with about three significant digits.
func num(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

// dnsperfResult is what the harness reads from dnsperf's statistics.
type dnsperfResult struct {
	Sent, Completed int
	QPS             float64
	RunTime         float64 // seconds dnsperf sent queries for
}

var (
	reSent      = regexp.MustCompile(`(?m)^\s*Queries sent:\s+(\d+)`)
	reCompleted = regexp.MustCompile(`(?m)^\s*Queries completed:\s+(\d+)`)
	reQPS       = regexp.MustCompile(`(?m)^\s*Queries per second:\s+([0-9.]+)`)
	reRunTime   = regexp.MustCompile(`(?m)^\s*Run time \(s\):\s+([0-9.]+)`)
)

func parseDnsperf(out string) (dnsperfResult, error) {
	var r dnsperfResult
	m1, m2, m3, m4 := reSent.FindStringSubmatch(out), reCompleted.FindStringSubmatch(out), reQPS.FindStringSubmatch(out), reRunTime.FindStringSubmatch(out)
	if m1 == nil || m2 == nil || m3 == nil || m4 == nil {
		return r, errors.New("parse dnsperf output: statistics not found")
	}
	var err1, err2, err3, err4 error
	r.Sent, err1 = strconv.Atoi(m1[1])
	r.Completed, err2 = strconv.Atoi(m2[1])
	r.QPS, err3 = strconv.ParseFloat(m3[1], 64)
	r.RunTime, err4 = strconv.ParseFloat(m4[1], 64)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return r, fmt.Errorf("parse dnsperf output: %w", err)
	}
	return r, nil
}

// latResult is one JSON line of dnslat's output.
type latResult struct {
	Name   string  `json:"name"`
	Count  int     `json:"count"`
	Errors int     `json:"errors"`
	P50us  float64 `json:"p50_us"`
	P99us  float64 `json:"p99_us"`
}

func parseDnslat(out string) (map[string]latResult, error) {
	res := map[string]latResult{}
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var r latResult
		if err := dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("parse dnslat output: %w", err)
		}
		res[r.Name] = r
	}
	if len(res) == 0 {
		return nil, errors.New("parse dnslat output: no results")
	}
	return res, nil
}

// parseIperf3 returns the receiver-side throughput in bit/s from iperf3 -J.
func parseIperf3(out string) (float64, error) {
	var doc struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return 0, fmt.Errorf("parse iperf3 json: %w", err)
	}
	if doc.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", doc.Error)
	}
	if doc.End.SumReceived.BitsPerSecond <= 0 {
		return 0, errors.New("parse iperf3 json: no received throughput")
	}
	return doc.End.SumReceived.BitsPerSecond, nil
}

// clientConf is the part of a wg-quick client config the tunnel bench uses.
type clientConf struct {
	PrivateKey   string
	Addresses    []string // CIDRs as written
	PeerKey      string
	PresharedKey string
	Endpoint     string
	AllowedIPs   []string
}

// parseWGQuick reads the [Interface] and the first [Peer] of a wg-quick file.
func parseWGQuick(s string) (clientConf, error) {
	var c clientConf
	section := ""
	peers := 0
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = strings.ToLower(strings.Trim(line, "[]"))
			if section == "peer" {
				peers++
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k, v = strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v)
		switch {
		case section == "interface" && k == "privatekey":
			c.PrivateKey = v
		case section == "interface" && k == "address":
			c.Addresses = append(c.Addresses, splitList(v)...)
		case section == "peer" && peers == 1 && k == "publickey":
			c.PeerKey = v
		case section == "peer" && peers == 1 && k == "presharedkey":
			c.PresharedKey = v
		case section == "peer" && peers == 1 && k == "endpoint":
			c.Endpoint = v
		case section == "peer" && peers == 1 && k == "allowedips":
			c.AllowedIPs = append(c.AllowedIPs, splitList(v)...)
		}
	}
	if c.PrivateKey == "" || c.PeerKey == "" || len(c.Addresses) == 0 {
		return c, errors.New("parse wg-quick config: need PrivateKey, Address and a [Peer] PublicKey")
	}
	return c, nil
}

func splitList(v string) []string {
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
