package gateway

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"

	"github.com/sluice-vpn/sluice/peers/etcdstore"
)

// fleetFile is `fleet:` as written: several gateways share one peer
// registry in etcd.
type fleetFile struct {
	Name string        `yaml:"name" doc:"this gateway's name, unique in the fleet (in status, metrics, the query log and peer config --gateway)" default:"the host name"`
	Etcd fleetEtcdFile `yaml:"etcd" doc:"the etcd cluster that holds the peer registry"`
}

type fleetEtcdFile struct {
	Endpoints []string `yaml:"endpoints" doc:"client URLs of the etcd members (http:// or https://)" kind:"URL"`
	Prefix    string   `yaml:"prefix" doc:"key prefix of the registry; every gateway of a fleet uses the same" default:"/sluice/"`
	CAFile    string   `yaml:"ca_file" doc:"PEM CA that signed the etcd servers' certificates" kind:"file" default:"the system's roots (https endpoints)"`
	CertFile  string   `yaml:"cert_file" doc:"PEM client certificate for mTLS to etcd" kind:"file"`
	KeyFile   string   `yaml:"key_file" doc:"PEM private key of cert_file" kind:"file"`
}

// FleetConfig is the `fleet:` section; zero (Enabled false) without it:
// the peer registry is then the local file in peers.state_dir.
type FleetConfig struct {
	Enabled   bool
	Name      string
	Endpoints []string
	Prefix    string
	CAFile    string
	CertFile  string
	KeyFile   string
}

// Equal reports whether two fleet sections are the same.
func (f FleetConfig) Equal(o FleetConfig) bool {
	return f.Enabled == o.Enabled && f.Name == o.Name && strings.Join(f.Endpoints, " ") == strings.Join(o.Endpoints, " ") &&
		f.Prefix == o.Prefix && f.CAFile == o.CAFile && f.CertFile == o.CertFile && f.KeyFile == o.KeyFile
}

// SnapshotFile is where a fleet gateway keeps the last registry state it
// applied (peers.json format, 0600): it starts from it when etcd is
// unreachable.
const SnapshotFile = "fleet-snapshot.json"

var fleetNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// buildFleet checks `fleet:` and fills c.Fleet.
func buildFleet(c *Config, fc *fleetFile, bad func(key, msg, fix string)) {
	e := fc.Etcd
	if fc.Name == "" && len(e.Endpoints) == 0 && e.Prefix == "" && e.CAFile == "" && e.CertFile == "" && e.KeyFile == "" {
		return
	}
	f := &c.Fleet
	f.Enabled = true
	f.Name = fc.Name
	if f.Name == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			bad("fleet.name", "not set and the host name is unknown", "set fleet.name, e.g. gw-a")
		}
		f.Name = strings.SplitN(h, ".", 2)[0]
	}
	if !fleetNameRE.MatchString(f.Name) {
		bad("fleet.name", fmt.Sprintf("%q is not a gateway name", f.Name), "use letters, digits, '_', '.', '-' (up to 63), e.g. gw-a")
	}
	if len(fc.Etcd.Endpoints) == 0 {
		bad("fleet.etcd.endpoints", "no etcd endpoint", "list the client URLs of the etcd members, e.g. [http://10.50.0.11:2379]")
	}
	https := 0
	for i, e := range fc.Etcd.Endpoints {
		u, err := url.Parse(e)
		key := fmt.Sprintf("fleet.etcd.endpoints[%d]", i)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" && u.Path != "/" {
			bad(key, fmt.Sprintf("%q is not an etcd client URL", e), "write it as http://HOST:2379 or https://HOST:2379")
			continue
		}
		if _, _, err := net.SplitHostPort(u.Host); err != nil {
			bad(key, fmt.Sprintf("%q has no port", e), "add the client port, e.g. :2379")
			continue
		}
		if u.Scheme == "https" {
			https++
		}
		f.Endpoints = append(f.Endpoints, u.Scheme+"://"+u.Host)
	}
	if https != 0 && https != len(fc.Etcd.Endpoints) {
		bad("fleet.etcd.endpoints", "mixes http:// and https://", "use https:// for every member (or http:// for every one)")
	}
	c.DNS.QueryLog.Gateway = f.Name
	f.Prefix = orString(fc.Etcd.Prefix, etcdstore.DefaultPrefix)
	if !strings.HasPrefix(f.Prefix, "/") {
		bad("fleet.etcd.prefix", fmt.Sprintf("%q does not start with /", f.Prefix), "use a key prefix such as /sluice/")
	}
	if !strings.HasSuffix(f.Prefix, "/") {
		f.Prefix += "/"
	}
	f.CAFile, f.CertFile, f.KeyFile = fc.Etcd.CAFile, fc.Etcd.CertFile, fc.Etcd.KeyFile
	if (f.CertFile == "") != (f.KeyFile == "") {
		bad("fleet.etcd", "cert_file and key_file go together", "set both for mTLS, or neither")
	}
	if (f.CAFile != "" || f.CertFile != "") && https == 0 && len(fc.Etcd.Endpoints) > 0 {
		bad("fleet.etcd", "TLS files set but the endpoints are http://", "use https:// endpoints, or remove ca_file, cert_file and key_file")
	}
	for _, x := range []struct{ key, path string }{{"fleet.etcd.ca_file", f.CAFile}, {"fleet.etcd.cert_file", f.CertFile}, {"fleet.etcd.key_file", f.KeyFile}} {
		if x.path == "" {
			continue
		}
		if _, err := os.Stat(x.path); err != nil {
			bad(x.key, err.Error(), "point it at a PEM file readable by sluice")
		}
	}
}
