package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// writeGroupsConfig is writeConfig with groups employees (the default) and
// contractors (corp.example, 10.30.4.0/24).
func writeGroupsConfig(t *testing.T) string {
	t.Helper()
	path, _ := writeConfig(t, `groups:
  employees: {}
  contractors:
    zones: [corp.example]
    routes: [10.30.4.0/24]
`)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := strings.Replace(string(data), "  routes: [10.30.0.0/16]\n", "  routes: [10.30.0.0/16]\n  default_group: employees\n", 1)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPeerGroups(t *testing.T) {
	cfg := writeGroupsConfig(t)
	if _, errs, code := run(t, "check", "-c", cfg); code != 0 {
		t.Fatalf("check: %s", errs)
	}
	if out, errs, code := run(t, "peer", "add", "alice", "--device", "laptop", "-c", cfg); code != 0 || !strings.Contains(out, "group: employees") {
		t.Fatalf("add alice: %d %q %q", code, out, errs)
	}
	out, errs, code := run(t, "peer", "add", "bob", "--device", "laptop", "--group", "contractors", "--json", "-c", cfg)
	if code != 0 {
		t.Fatalf("add bob: %d %s", code, errs)
	}
	var added []peerJSON
	if err := json.Unmarshal([]byte(out), &added); err != nil || len(added) != 1 || added[0].Group != "contractors" || added[0].ID != "bob/laptop" {
		t.Errorf("add --json = %+v, %v (%s)", added, err, out)
	}
	if _, errs, code := run(t, "peer", "add", "carol", "--group", "auditors", "-c", cfg); code == 0 || !strings.Contains(errs, `group "auditors" is not configured`) {
		t.Errorf("add to an unknown group: %d %q", code, errs)
	}

	list, _, _ := run(t, "peer", "list", "-c", cfg)
	if !strings.Contains(list, "GROUP") || !rowHas(list, "alice/laptop", "employees") || !rowHas(list, "bob/laptop", "contractors") {
		t.Errorf("peer list:\n%s", list)
	}
	var views []peerJSON
	js, _, _ := run(t, "peer", "list", "--json", "-c", cfg)
	if err := json.Unmarshal([]byte(js), &views); err != nil || len(views) != 2 || views[0].Group != "employees" || views[1].Group != "contractors" {
		t.Errorf("peer list --json: %v %s", err, js)
	}

	// The contractor's client config routes only its group's routes (and
	// the resolvers); the employee's routes peers.routes.
	conf, errs, code := run(t, "peer", "config", "bob/laptop", "-c", cfg)
	if code != 0 || !strings.Contains(conf, "AllowedIPs = 10.20.0.1/32, 10.20.0.53/32, 10.30.4.0/24, fd20::1/128, fd20::53/128") || strings.Contains(conf, "10.30.0.0/16") {
		t.Errorf("contractor config (%d %s):\n%s", code, errs, conf)
	}
	conf, _, _ = run(t, "peer", "config", "alice/laptop", "-c", cfg)
	if !strings.Contains(conf, "10.30.0.0/16") {
		t.Errorf("employee config:\n%s", conf)
	}

	// set-group: alice becomes a contractor; her routes change.
	out, errs, code = run(t, "peer", "set-group", "alice/laptop", "contractors", "-c", cfg)
	if code != 0 || !strings.Contains(out, "employees -> contractors") || !strings.Contains(out, "client config changed") {
		t.Errorf("set-group: %d %q %q", code, out, errs)
	}
	out, _, code = run(t, "peer", "set-group", "alice/laptop", "employees", "--json", "-c", cfg)
	var res setGroupResult
	if err := json.Unmarshal([]byte(out), &res); code != 0 || err != nil || res.From != "contractors" || res.To != "employees" || !res.RoutesChanged {
		t.Errorf("set-group --json: %d %v %+v", code, err, res)
	}
	if _, errs, code := run(t, "peer", "set-group", "alice/laptop", "nobody", "-c", cfg); code == 0 || !strings.Contains(errs, "not configured") {
		t.Errorf("set-group to an unknown group: %d %q", code, errs)
	}
	if _, errs, code := run(t, "peer", "set-group", "zed/laptop", "employees", "-c", cfg); code == 0 || !strings.Contains(errs, "not found") {
		t.Errorf("set-group of a missing peer: %d %q", code, errs)
	}
	show, _, _ := run(t, "peer", "show", "bob/laptop", "-c", cfg)
	if !strings.Contains(show, "group: contractors") {
		t.Errorf("peer show:\n%s", show)
	}

	// Without groups configured, --group is refused and list shows "-".
	plain, _ := writeConfig(t, "")
	if _, errs, code := run(t, "peer", "add", "dave", "--group", "contractors", "-c", plain); code == 0 || !strings.Contains(errs, "no groups are configured") {
		t.Errorf("--group without groups: %d %q", code, errs)
	}
}

// rowHas reports whether a line of out starts with id and contains word.
func rowHas(out, id, word string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, id+" ") && strings.Contains(l, " "+word+" ") {
			return true
		}
	}
	return false
}
