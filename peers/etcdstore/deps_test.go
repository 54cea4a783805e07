package etcdstore

import (
	"os/exec"
	"strings"
	"testing"
)

// The etcd client stays here: the proxy, the firewall and the registry's
// own package never import it (DESIGN.md: the etcd code in its own
// subpackage so its dependencies stay there).
func TestEtcdStaysInItsSubpackage(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "../../dnsproxy", "../../firewall", "..").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "github.com/sluice-vpn/sluice/peers\n") {
		t.Fatalf("go list -deps did not list peers itself:\n%s", out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "go.etcd.io") || strings.Contains(line, "google.golang.org/grpc") {
			t.Errorf("%s is a dependency of dnsproxy, firewall or peers", line)
		}
	}
}
