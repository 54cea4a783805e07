// Package atomicfile writes a file so that a reader, or the next start after
// a crash, sees either the old content or the new one whole: a temporary
// file in the same directory, written, fsynced, renamed over the target.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data, mode perm (set before a byte is written).
// The temporary file is removed on every failure.
func Write(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
