package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/firewall"
	"github.com/sluice-vpn/sluice/peers"
)

// fileConfig is the YAML document as written by the operator. Every value is
// kept in its written form (strings) so that validation can name the file,
// line and key of a bad value; Config is built from it by build.
//
// Each section is its own type, and a package that owns a section owns its
// file type too (firewall.FileConfig, dnsproxy.FileConfig inlined into dns).
// To add a key: a field with yaml and doc tags in the owning section type
// (default, allowed and kind tags when they apply: kind "duration" gets the
// duration syntax checks for free), then its rule in that section's build
// function; a file `sluice up` opens also goes into that package's
// Preflight, so that check finds it bad before up changes anything. `sluice config reference`, unknown
// key suggestions and type errors all come from these types.
type fileConfig struct {
	Interface interfaceFile        `yaml:"interface" doc:"the WireGuard interface"`
	DNS       dnsFile              `yaml:"dns" doc:"the in-tunnel resolver"`
	Enforce   firewall.FileConfig  `yaml:"enforce" doc:"the nftables table that stops peers resolving around the gateway"`
	Peers     peers.FileConfig     `yaml:"peers" doc:"the peer store and what clients route"`
	Admin     adminFile            `yaml:"admin" doc:"metrics, health and the CLI's control socket"`
	Groups    map[string]fileGroup `yaml:"groups" doc:"peer groups by name: the internal zones and routes each may reach (absent: every peer sees every zone and route)"`
	Fleet     fleetFile            `yaml:"fleet" doc:"several gateways sharing one peer registry in etcd (absent: the local store in peers.state_dir)"`
}

type interfaceFile struct {
	Name           string   `yaml:"name" doc:"interface name" default:"sluice0" allowed:"1-15 letters, digits, '_', '.', '-'"`
	Backend        string   `yaml:"backend" doc:"WireGuard implementation" default:"auto (userspace without a file)" allowed:"auto, kernel, userspace"`
	ListenPort     int      `yaml:"listen_port" doc:"UDP port peers dial" default:"51820" allowed:"1-65535"`
	PrivateKeyFile string   `yaml:"private_key_file" doc:"the gateway's private key (created 0600 when missing)" kind:"file" default:"<peers.state_dir>/<name>.key"`
	Addresses      []string `yaml:"addresses" doc:"the gateway's tunnel addresses: one IPv4 and one IPv6 prefix; peers are allocated from them" kind:"address/prefix" default:"[10.20.0.1/24, fd20::1/64]"`
	MTU            int      `yaml:"mtu" doc:"interface MTU (also written into client configs)" default:"1420" allowed:"1280-9000"`
	Endpoint       string   `yaml:"endpoint" doc:"host:port clients dial, written into client configs" default:"none: peer config then needs --endpoint"`
}

type dnsFile struct {
	Mode          string     `yaml:"mode" doc:"split: clients route peers.routes and the resolvers; full: everything, internal resolvers only" default:"split" allowed:"split, full"`
	Listen        []string   `yaml:"listen" doc:"in-tunnel resolver addresses, one IPv4 and one IPv6 inside interface.addresses" kind:"IP" default:"[10.20.0.53, fd20::53]"`
	SearchDomains []string   `yaml:"search_domains" doc:"search suffixes written into client configs" kind:"domain name"`
	Zones         []zoneFile `yaml:"zones" doc:"conditionally forwarded zones, each answered only by its own upstreams"`
	Default       struct {
		Upstreams []string `yaml:"upstreams" doc:"resolvers for every name outside the zones (internal ones in full mode)" kind:"upstream" default:"the host's resolv.conf without a file"`
	} `yaml:"default" doc:"the default resolver group"`
	InternalPrefixes []string `yaml:"internal_prefixes" doc:"full mode: upstreams must be inside these; never a default route" kind:"CIDR" default:"[10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, fc00::/7]"`

	Encrypted []string   `yaml:"encrypted" doc:"also serve DNS over TLS (853) and DNS over HTTPS (443, /dns-query) on the resolver addresses" allowed:"dot, doh"`
	TLS       fileDNSTLS `yaml:"tls" doc:"the certificate of the DoT/DoH listeners"`

	dnsproxy.FileConfig `yaml:",inline"`
}

type zoneFile struct {
	Name      string   `yaml:"name" doc:"zone name, e.g. corp.example or 30.10.in-addr.arpa" kind:"domain name"`
	Upstreams []string `yaml:"upstreams" doc:"the zone's resolvers" kind:"upstream"`
}

type adminFile struct {
	Listen        string `yaml:"listen" doc:"HTTP /metrics /healthz /readyz; \"\" disables" kind:"host:port" default:"127.0.0.1:9153"`
	ControlSocket string `yaml:"control_socket" doc:"the CLI's unix socket (mode 0600)" kind:"file" default:"/run/sluice/<interface.name>.sock"`
}

// ConfigError is one problem in a configuration file: where it is, which key,
// what is wrong and what to do about it.
type ConfigError struct {
	File string
	Line int    // 0 when the key is absent from the file
	Key  string // dotted path, e.g. dns.zones[0].upstreams[1]
	Msg  string
	Fix  string

	value bool // a well-typed but bad value: the rest of the file is still checked
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

// decodeFile decodes data strictly. Tabs in indentation, unknown keys (with
// a suggestion), values of the wrong type and malformed durations are errors
// naming the file, line and full key path, found before decoding.
//
// Errors in values of the right type (a negative duration) are returned as
// early, with a decoded fileConfig, so that build still checks the rest.
func decodeFile(name string, data []byte) (fc *fileConfig, pos positions, early ConfigErrors, err error) {
	fc = &fileConfig{}
	pos = positions{}
	if len(bytes.TrimSpace(data)) == 0 {
		return fc, pos, nil, nil
	}
	if errs := checkTabs(name, data); len(errs) > 0 {
		return nil, nil, nil, errs
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, nil, nil, yamlErrors(name, err)
	}
	indexPositions(&root, "", pos)
	var errs ConfigErrors
	if len(root.Content) > 0 {
		checkNode(name, root.Content[0], reflect.TypeFor[fileConfig](), "", "", &errs)
	}
	for _, e := range errs {
		if !e.value {
			return nil, nil, nil, errs // the document does not fit the types
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(fc); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, nil, yamlErrors(name, err)
	}
	return fc, pos, errs, nil // bad values of the right type: build goes on and adds its own
}

// checkTabs finds tabs in indentation, which YAML forbids and reports only
// as "found character that cannot start any token".
func checkTabs(name string, data []byte) ConfigErrors {
	var errs ConfigErrors
	section := ""
	for i, line := range strings.Split(string(data), "\n") {
		body := strings.TrimLeft(line, " \t")
		indent := line[:len(line)-len(body)]
		key, _, _ := strings.Cut(strings.TrimPrefix(body, "- "), ":")
		key = strings.TrimSpace(key)
		if indent == "" && body != "" && !strings.HasPrefix(body, "#") {
			section = key
		}
		if !strings.Contains(indent, "\t") || body == "" || strings.HasPrefix(body, "#") {
			continue
		}
		path := key
		if section != "" && section != key {
			path = section + "." + key
		}
		errs = append(errs, &ConfigError{File: name, Line: i + 1, Key: path, Msg: "tab in indentation",
			Fix: "indent with spaces only (YAML does not allow tabs), two per level"})
	}
	return errs
}

// fieldsOf lists the yaml keys of struct type t, following inlined structs.
func fieldsOf(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if opts == "inline" {
			for k, v := range fieldsOf(f.Type) {
				out[k] = v
			}
			continue
		}
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		out[name] = f
	}
	return out
}

func joinKey(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// checkNode compares the YAML node n with the Go type t it decodes into.
func checkNode(file string, n *yaml.Node, t reflect.Type, path, kind string, errs *ConfigErrors) {
	bad := func(line int, msg, fix string) {
		*errs = append(*errs, &ConfigError{File: file, Line: line, Key: path, Msg: msg, Fix: fix})
	}
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an empty key is the default
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			bad(n.Line, fmt.Sprintf("%s is a section, not a single value", describe(path)), "put its keys on the lines below it, indented by two spaces")
			return
		}
		fields := fieldsOf(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			f, ok := fields[k.Value]
			if !ok {
				*errs = append(*errs, &ConfigError{File: file, Line: k.Line, Key: joinKey(path, k.Value),
					Msg: fmt.Sprintf("unknown key %q", k.Value), Fix: suggestKey(path, k.Value, fields)})
				continue
			}
			checkNode(file, v, f.Type, joinKey(path, k.Value), f.Tag.Get("kind"), errs)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			bad(n.Line, fmt.Sprintf("%s is a section of named entries", describe(path)), "write each name as a key on its own line, indented by two spaces")
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			checkNode(file, n.Content[i+1], t.Elem(), joinKey(path, n.Content[i].Value), kind, errs)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			bad(n.Line, fmt.Sprintf("%s is a list", describe(path)), "write it like [a, b] or one \"- item\" per line")
			return
		}
		for i, c := range n.Content {
			checkNode(file, c, t.Elem(), path+"["+strconv.Itoa(i)+"]", kind, errs)
		}
	case reflect.Int:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			bad(n.Line, fmt.Sprintf("%s is not a whole number", quoteNode(n)), "write a number without quotes, e.g. "+exampleInt(path))
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			bad(n.Line, fmt.Sprintf("%s is not true or false", quoteNode(n)), "write true or false without quotes")
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			bad(n.Line, "expects a single value, not a list or a section", "write one value on the key's line")
			return
		}
		if kind == "duration" {
			if msg, fix := checkDuration(n); msg != "" {
				*errs = append(*errs, &ConfigError{File: file, Line: n.Line, Key: path, Msg: msg, Fix: fix, value: true})
			}
		}
	}
}

// checkDuration returns what is wrong with a duration value, if anything.
func checkDuration(n *yaml.Node) (msg, fix string) {
	v := strings.TrimSpace(n.Value)
	if n.Tag == "!!int" || n.Tag == "!!float" {
		return fmt.Sprintf("%s is a bare number, not a duration", v), fmt.Sprintf("add the unit: %ss, %sms or %sm", v, v, v)
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return fmt.Sprintf("%q is not a duration", v), "write it like 2s, 500ms or 1h"
	}
	if d < 0 {
		return fmt.Sprintf("%s is negative", v), "durations are 0s or more, e.g. " + strings.TrimPrefix(v, "-")
	}
	return "", ""
}

func describe(path string) string {
	if path == "" {
		return "the file"
	}
	return path
}

func quoteNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a section"
	}
	return strconv.Quote(n.Value)
}

func exampleInt(path string) string {
	for _, k := range keyReference() {
		if k.Path == path && k.Default != "" {
			if _, err := strconv.Atoi(k.Default); err == nil {
				return k.Default
			}
		}
	}
	return "42"
}

// suggestKey says what the operator probably meant: a sibling key a typo
// away, or the same key in another section.
func suggestKey(section, key string, siblings map[string]reflect.StructField) string {
	best, bestDist := "", 3
	for name := range siblings {
		if d := editDistance(strings.ToLower(key), name); d < bestDist || d == bestDist && name < best {
			best, bestDist = name, d
		}
	}
	if best != "" && bestDist <= max(1, len(key)/3) {
		return "did you mean " + joinKey(section, best) + "?"
	}
	var elsewhere []string
	for _, k := range keyReference() {
		last := k.Path[strings.LastIndexAny(k.Path, ".]")+1:]
		if last == key && !strings.HasPrefix(k.Path, joinKey(section, key)) {
			elsewhere = append(elsewhere, k.Path)
		}
	}
	if len(elsewhere) > 0 {
		return "did you mean " + strings.Join(elsewhere, " or ") + "? (it belongs to another section)"
	}
	names := make([]string, 0, len(siblings))
	for n := range siblings {
		names = append(names, n)
	}
	sort.Strings(names)
	where := "here"
	if section != "" {
		where = "in " + section
	}
	return "valid keys " + where + ": " + strings.Join(names, ", ") + " (sluice config reference lists every key)"
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// KeyDoc documents one configuration key.
type KeyDoc struct {
	Path    string `json:"key"`     // dotted, lists as [], e.g. dns.zones[].name
	Type    string `json:"type"`    // integer, boolean, duration, list of CIDR, section...
	Default string `json:"default"` // "" when there is none
	Allowed string `json:"allowed"` // "" when any value of the type
	Doc     string `json:"doc"`
}

// KeyReference documents every configuration key, in file order. It is
// generated from the file types, the same ones the file is decoded into.
func KeyReference() []KeyDoc { return slices.Clone(keyReference()) }

var keyReference = sync.OnceValue(func() []KeyDoc {
	var out []KeyDoc
	walkKeys(reflect.TypeFor[fileConfig](), "", &out)
	return out
})

func walkKeys(t reflect.Type, prefix string, out *[]KeyDoc) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if opts == "inline" {
			walkKeys(f.Type, prefix, out)
			continue
		}
		if name == "" || !f.IsExported() {
			continue
		}
		path := joinKey(prefix, name)
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		d := KeyDoc{Path: path, Doc: f.Tag.Get("doc"), Default: f.Tag.Get("default"), Allowed: f.Tag.Get("allowed")}
		kind := f.Tag.Get("kind")
		switch {
		case ft.Kind() == reflect.Struct:
			d.Type = "section"
			*out = append(*out, d)
			walkKeys(ft, path, out)
			continue
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
			d.Type = "named sections"
			*out = append(*out, d)
			walkKeys(ft.Elem(), path+".<name>", out)
			continue
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			d.Type = "list of sections"
			*out = append(*out, d)
			walkKeys(ft.Elem(), path+"[]", out)
			continue
		case ft.Kind() == reflect.Slice:
			d.Type = "list of " + orString(kind, "string")
		case kind != "":
			d.Type = kind
		case ft.Kind() == reflect.Int:
			d.Type = "integer"
		case ft.Kind() == reflect.Bool:
			d.Type = "boolean"
		default:
			d.Type = "string"
		}
		*out = append(*out, d)
	}
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
			ce.Fix = "check the spelling; `sluice config reference` lists every key"
		}
		if strings.HasPrefix(ce.Msg, "cannot unmarshal") {
			ce.Fix = "check the value's type with `sluice config reference`"
		}
		out = append(out, ce)
	}
	return out
}
