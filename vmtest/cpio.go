package vmtest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// Initramfs is the content of an initramfs, written as an uncompressed cpio
// archive in the "newc" format the kernel unpacks.
type Initramfs struct {
	entries map[string]entry
}

type entry struct {
	mode  uint32 // type and permission bits (S_IFREG|0755, ...)
	src   string // host file for regular files with no data
	data  []byte
	rdev  [2]uint32 // major, minor for device nodes
	link  string    // symlink target
	isDir bool
}

const (
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
	sIFCHR = 0o020000
)

// NewInitramfs returns an archive with /dev/console (the kernel opens it as
// the init's stdin, stdout and stderr) and nothing else.
func NewInitramfs() *Initramfs {
	a := &Initramfs{entries: map[string]entry{}}
	a.Device("/dev/console", 5, 1)
	return a
}

func (a *Initramfs) parents(p string) {
	for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
		if _, ok := a.entries[d]; !ok {
			a.entries[d] = entry{mode: sIFDIR | 0o755, isDir: true}
		}
	}
}

// File adds the host file src at dst with mode perm.
func (a *Initramfs) File(dst, src string, perm os.FileMode) {
	a.parents(dst)
	a.entries[dst] = entry{mode: sIFREG | uint32(perm.Perm()), src: src}
}

// Bytes adds a regular file with the given content.
func (a *Initramfs) Bytes(dst string, data []byte, perm os.FileMode) {
	a.parents(dst)
	a.entries[dst] = entry{mode: sIFREG | uint32(perm.Perm()), data: data}
}

// Dir adds an empty directory.
func (a *Initramfs) Dir(dst string) {
	a.parents(dst)
	a.entries[dst] = entry{mode: sIFDIR | 0o755, isDir: true}
}

// Symlink adds a symbolic link.
func (a *Initramfs) Symlink(dst, target string) {
	a.parents(dst)
	a.entries[dst] = entry{mode: sIFLNK | 0o777, link: target}
}

// Device adds a character device node.
func (a *Initramfs) Device(dst string, major, minor uint32) {
	a.parents(dst)
	a.entries[dst] = entry{mode: sIFCHR | 0o600, rdev: [2]uint32{major, minor}}
}

// WriteTo writes the archive: directories before their content, then the
// trailer.
func (a *Initramfs) WriteTo(w io.Writer) (int64, error) {
	bw := bufio.NewWriterSize(w, 1<<20)
	cw := &countWriter{w: bw}
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	sort.Strings(names) // a parent sorts before its children
	ino := uint32(1)
	for _, n := range names {
		e := a.entries[n]
		var size int64
		var body io.Reader
		switch {
		case e.mode&0o170000 == sIFLNK:
			body = strings.NewReader(e.link)
			size = int64(len(e.link))
		case e.src != "":
			f, err := os.Open(e.src)
			if err != nil {
				return cw.n, fmt.Errorf("initramfs %s: %w", n, err)
			}
			st, err := f.Stat()
			if err != nil {
				f.Close()
				return cw.n, fmt.Errorf("initramfs %s: %w", n, err)
			}
			size = st.Size()
			err = writeEntry(cw, strings.TrimPrefix(n, "/"), ino, e, size, f)
			f.Close()
			if err != nil {
				return cw.n, fmt.Errorf("initramfs %s: %w", n, err)
			}
			ino++
			continue
		case e.data != nil:
			body = strings.NewReader(string(e.data))
			size = int64(len(e.data))
		}
		if err := writeEntry(cw, strings.TrimPrefix(n, "/"), ino, e, size, body); err != nil {
			return cw.n, fmt.Errorf("initramfs %s: %w", n, err)
		}
		ino++
	}
	if err := writeEntry(cw, "TRAILER!!!", 0, entry{}, 0, nil); err != nil {
		return cw.n, err
	}
	return cw.n, bw.Flush()
}

// writeEntry writes one newc header, the name and the body, each padded to
// four bytes.
func writeEntry(w *countWriter, name string, ino uint32, e entry, size int64, body io.Reader) error {
	nlink := 1
	if e.isDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, e.mode, 0, 0, nlink, 0, size, 0, 0, e.rdev[0], e.rdev[1], len(name)+1, 0)
	if _, err := io.WriteString(w, hdr+name+"\x00"); err != nil {
		return err
	}
	if err := w.pad(); err != nil {
		return err
	}
	if body != nil {
		n, err := io.Copy(w, body)
		if err != nil {
			return err
		}
		if n != size {
			return fmt.Errorf("wrote %d of %d bytes (file changed while archived)", n, size)
		}
	}
	return w.pad()
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *countWriter) pad() error {
	if r := c.n % 4; r != 0 {
		_, err := c.Write(make([]byte, 4-r))
		return err
	}
	return nil
}
