// Package e2e owns sluice's end-to-end tests (tier 3 of the test pyramid):
// the real sluice binary as the gateway, wg-quick with Debian's wireguard-go
// as the client, unbound as the internal and public resolvers and dig, kdig
// and curl as applications, all inside network namespaces that the tests
// create and remove (internal/netnstest). It also holds demo.sh, the guided
// tour run by `make demo`.
//
// The package has no non-test code: the topology helpers live in
// topology_test.go and the tests build the sluice binary once in TestMain.
package e2e
