package vmtest

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Kernel is an extracted Debian kernel package.
type Kernel struct {
	// Dir is the extraction root (boot/, lib/modules/).
	Dir string
	// Release is the kernel release, e.g. 6.1.0-57-amd64.
	Release string
	// Vmlinuz is the kernel image.
	Vmlinuz string
}

// FindKernel finds the one kernel extracted under dir.
func FindKernel(dir string) (Kernel, error) {
	imgs, err := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if err != nil {
		return Kernel{}, err
	}
	if len(imgs) != 1 {
		return Kernel{}, fmt.Errorf("find kernel in %s: want one boot/vmlinuz-*, found %d (run `make vm-deps` to download Debian's linux-image-amd64 there)", dir, len(imgs))
	}
	rel := strings.TrimPrefix(filepath.Base(imgs[0]), "vmlinuz-")
	if st, err := os.Stat(filepath.Join(dir, "lib", "modules", rel, "kernel")); err != nil || !st.IsDir() {
		return Kernel{}, fmt.Errorf("find kernel in %s: no lib/modules/%s/kernel (run `make vm-deps`)", dir, rel)
	}
	return Kernel{Dir: dir, Release: rel, Vmlinuz: imgs[0]}, nil
}

// Module is one loadable module.
type Module struct {
	Name string
	Path string
}

// ResolveModules returns the modules named, with every dependency before
// the modules that need it (the order to load them in). Names built into the
// kernel (modules.builtin) are left out. Dependencies are read from each
// module's .modinfo section, so the package needs no depmod run.
func (k Kernel) ResolveModules(names []string) ([]Module, error) {
	root := filepath.Join(k.Dir, "lib", "modules", k.Release)
	files := map[string]string{}
	err := filepath.WalkDir(filepath.Join(root, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			files[moduleName(p)] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list modules of %s: %w", k.Release, err)
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(root, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[moduleName(l)] = true
		}
	}

	var out []Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, from string) error
	visit = func(name, from string) error {
		name = moduleName(name)
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("resolve module %s: dependency cycle through %s", name, from)
		}
		if builtin[name] {
			state[name] = 2
			return nil
		}
		path, ok := files[name]
		if !ok {
			if from != "" {
				return fmt.Errorf("resolve module %s (needed by %s): not in %s", name, from, root)
			}
			return fmt.Errorf("resolve module %s: not in %s", name, root)
		}
		state[name] = 1
		deps, err := moduleDepends(path)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		out = append(out, Module{Name: name, Path: path})
		return nil
	}
	for _, n := range names {
		if err := visit(n, ""); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// moduleDepends reads the depends= entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("read module %s: no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d = strings.TrimSpace(d); d != "" {
					deps = append(deps, d)
				}
			}
			return deps, nil
		}
	}
	return nil, errors.New("read module " + path + ": no depends= in .modinfo")
}
