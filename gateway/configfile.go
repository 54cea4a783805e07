package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// fileConfig is the YAML document as written by the operator. Every value is
// kept in its written form (strings) so that validation can name the file,
// line and key of a bad value; Config is built from it by validate.
type fileConfig struct {
	Interface struct {
		Name           string   `yaml:"name"`
		Backend        string   `yaml:"backend"`
		ListenPort     int      `yaml:"listen_port"`
		PrivateKeyFile string   `yaml:"private_key_file"`
		Addresses      []string `yaml:"addresses"`
		MTU            int      `yaml:"mtu"`
		Endpoint       string   `yaml:"endpoint"`
	} `yaml:"interface"`
	DNS struct {
		Mode          string   `yaml:"mode"`
		Listen        []string `yaml:"listen"`
		SearchDomains []string `yaml:"search_domains"`
		Zones         []struct {
			Name      string   `yaml:"name"`
			Upstreams []string `yaml:"upstreams"`
		} `yaml:"zones"`
		Default struct {
			Upstreams []string `yaml:"upstreams"`
		} `yaml:"default"`
		EDNSBufferSize   int      `yaml:"edns_buffer_size"`
		InternalPrefixes []string `yaml:"internal_prefixes"`
		UpstreamTimeout  string   `yaml:"upstream_timeout"`
		TLSCAFile        string   `yaml:"tls_ca_file"`
		QueryLog         string   `yaml:"query_log"`
		Cache            struct {
			Size        *int   `yaml:"size"`
			MaxTTL      string `yaml:"max_ttl"`
			ServfailTTL string `yaml:"servfail_ttl"`
		} `yaml:"cache"`
		Health struct {
			Name     string `yaml:"name"`
			Interval string `yaml:"interval"`
			Timeout  string `yaml:"timeout"`
			Failures int    `yaml:"failures"`
			Disabled bool   `yaml:"disabled"`
		} `yaml:"health"`
		Policy struct {
			Canaries      *bool    `yaml:"canaries"`
			BlockDoHNames *bool    `yaml:"block_doh_names"`
			BlocklistFile string   `yaml:"blocklist_file"`
			Allowlist     []string `yaml:"allowlist"`
		} `yaml:"policy"`
		Limits struct {
			PeerQPS     *int `yaml:"peer_qps"`
			PeerBurst   *int `yaml:"peer_burst"`
			MaxInflight *int `yaml:"max_inflight"`
		} `yaml:"limits"`
		// Encrypted DNS on the resolver addresses (config_encrypted.go).
		Encrypted []string   `yaml:"encrypted"`
		TLS       fileDNSTLS `yaml:"tls"`
	} `yaml:"dns"`
	Enforce struct {
		OffPolicyDNS    string   `yaml:"off_policy_dns"`
		DoT             string   `yaml:"dot"`
		DoH             string   `yaml:"doh"`
		DoHIPsFile      string   `yaml:"doh_ips_file"`
		DoHAllow        []string `yaml:"doh_allow"`
		EgressInterface string   `yaml:"egress_interface"`
		PeerToPeer      bool     `yaml:"peer_to_peer"`
		KeepOnStop      bool     `yaml:"keep_on_stop"`
		Table           string   `yaml:"table"`
	} `yaml:"enforce"`
	Peers struct {
		StateDir            string   `yaml:"state_dir"`
		Routes              []string `yaml:"routes"`
		PersistentKeepalive string   `yaml:"persistent_keepalive"`
	} `yaml:"peers"`
	Admin struct {
		Listen        string `yaml:"listen"`
		ControlSocket string `yaml:"control_socket"`
	} `yaml:"admin"`
}

// ConfigError is one problem in a configuration file: where it is, which key,
// what is wrong and what to do about it.
type ConfigError struct {
	File string
	Line int    // 0 when the key is absent from the file
	Key  string // dotted path, e.g. dns.zones[0].upstreams[1]
	Msg  string
	Fix  string
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	if e.Fix != "" {
		b.WriteString(" (" + e.Fix + ")")
	}
	return b.String()
}

// ConfigErrors is every problem found in one file, in file order.
type ConfigErrors []*ConfigError

func (es ConfigErrors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Unwrap lets errors.As find the individual errors.
func (es ConfigErrors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// positions maps dotted key paths to the line of their value in the file.
type positions map[string]int

func indexPositions(n *yaml.Node, prefix string, into positions) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			indexPositions(c, prefix, into)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			path := k.Value
			if prefix != "" {
				path = prefix + "." + k.Value
			}
			into[path] = k.Line
			indexPositions(v, path, into)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			path := prefix + "[" + strconv.Itoa(i) + "]"
			into[path] = c.Line
			indexPositions(c, path, into)
		}
	}
}

// line returns the line of key, or of its nearest ancestor present in the file.
func (p positions) line(key string) int {
	for key != "" {
		if l, ok := p[key]; ok {
			return l
		}
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			break
		}
		key = key[:i]
	}
	return 0
}

var yamlLineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// decodeFile decodes data strictly: unknown keys and wrong types are errors
// naming the file and line.
func decodeFile(name string, data []byte) (*fileConfig, positions, error) {
	var fc fileConfig
	pos := positions{}
	if len(bytes.TrimSpace(data)) == 0 {
		return &fc, pos, nil
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, nil, yamlErrors(name, err)
	}
	indexPositions(&root, "", pos)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&fc); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, yamlErrors(name, err)
	}
	return &fc, pos, nil
}

// yamlErrors turns yaml's "line N: msg" errors into ConfigErrors.
func yamlErrors(name string, err error) error {
	var te *yaml.TypeError
	var lines []string
	if errors.As(err, &te) {
		lines = te.Errors
	} else {
		lines = []string{strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	var out ConfigErrors
	for _, l := range lines {
		ce := &ConfigError{File: name, Msg: l}
		if m := yamlLineRE.FindStringSubmatch(l); m != nil {
			ce.Line, _ = strconv.Atoi(m[1])
			ce.Msg = m[2]
		}
		if strings.Contains(ce.Msg, "not found in type") {
			field := ce.Msg
			if i := strings.Index(field, "field "); i >= 0 {
				field = field[i+len("field "):]
			}
			if i := strings.Index(field, " not found"); i >= 0 {
				field = field[:i]
			}
			ce.Msg = fmt.Sprintf("unknown key %q", field)
			ce.Fix = "check the spelling; `sluice check --help` lists every key"
		}
		if strings.HasPrefix(ce.Msg, "cannot unmarshal") {
			ce.Fix = "check the value's type against the example in examples/"
		}
		out = append(out, ce)
	}
	return out
}
