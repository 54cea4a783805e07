package firewall

import "fmt"

// ErrTableMissing means the applied table is not in the kernel right now:
// something deleted it. Run puts it back within pollInterval.
var ErrTableMissing = fmt.Errorf("firewall %w (deleted outside sluice; it is re-applied within a second)", errNoTable)

// Present checks that the applied table is in the kernel now. It returns
// nil when it is, ErrNotApplied before Apply (or after Remove), ErrClosed
// after Close, and an error wrapping ErrTableMissing when it is gone.
func (f *Firewall) Present() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	if f.desired == nil {
		return ErrNotApplied
	}
	c, err := f.conn(0)
	if err != nil {
		return err
	}
	ok, err := tableExists(c, f.desired.table)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("table inet %s: %w", f.desired.table, ErrTableMissing)
	}
	return nil
}
