package gateway

import (
	"bytes"
	"fmt"
	"os"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// ReadKey reads an existing WireGuard private key file without creating
// one: the CLI uses it to learn the gateway's public key, and Preflight to
// find a broken key file before `sluice up` changes anything. A file
// readable by others is refused. A missing file is an error wrapping
// os.ErrNotExist.
func ReadKey(path string) (wgtypes.Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("read private key: %w", err)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return wgtypes.Key{}, fmt.Errorf("private key %s is readable by others (mode %04o): run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	key, err := wgtypes.ParseKey(string(bytes.TrimSpace(data)))
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("parse private key %s: not a base64 WireGuard key (create one with `wg genkey`)", path)
	}
	return key, nil
}
