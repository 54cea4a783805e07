// Command scale fills a sluice peer store with many peers for the scale
// benchmark (bench/run.sh): `sluice up` on that state directory then has to
// program all of them. It owns only this fixture; peers are created through
// the peers package's own AddMany, exactly as `sluice peer add` stores them.
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/sluice-vpn/sluice/peers"
)

const (
	defaultPeers = 10000
	defaultV4    = "10.30.0.1/16"
	defaultV6    = "fd20::1/64"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		state   = flag.String("state", "", "peers state directory (created)")
		n       = flag.Int("n", defaultPeers, "peers to add")
		v4      = flag.String("v4", defaultV4, "gateway IPv4 interface prefix")
		v6      = flag.String("v6", defaultV6, "gateway IPv6 interface prefix")
		reserve = flag.String("reserve", "10.30.0.53,fd20::53", "comma-separated addresses never allocated (resolvers)")
	)
	flag.Parse()
	if *state == "" || *n <= 0 {
		return fmt.Errorf("need -state and a positive -n")
	}
	p4, err := netip.ParsePrefix(*v4)
	if err != nil {
		return fmt.Errorf("parse -v4 %q: %w", *v4, err)
	}
	p6, err := netip.ParsePrefix(*v6)
	if err != nil {
		return fmt.Errorf("parse -v6 %q: %w", *v6, err)
	}
	pool := peers.Pool{V4: p4, V6: p6}
	for _, s := range strings.Split(*reserve, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("parse reserved address %q: %w", s, err)
		}
		pool.Reserved = append(pool.Reserved, a)
	}
	if err := pool.Validate(); err != nil {
		return fmt.Errorf("validate pool: %w", err)
	}
	if err := os.MkdirAll(*state, 0o700); err != nil {
		return fmt.Errorf("create state dir %q: %w", *state, err)
	}
	store, err := peers.Open(*state)
	if err != nil {
		return fmt.Errorf("open peer store %q: %w", *state, err)
	}
	reqs := make([]peers.AddRequest, *n)
	for i := range reqs {
		reqs[i] = peers.AddRequest{User: fmt.Sprintf("user%05d", i)}
	}
	start := time.Now()
	added, err := store.AddMany(reqs, pool)
	if err != nil {
		return fmt.Errorf("add %d peers: %w", *n, err)
	}
	fmt.Printf("added %d peers in %s\n", len(added), time.Since(start).Round(time.Millisecond))
	return nil
}
