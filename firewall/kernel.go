package firewall

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

const (
	// elementsPerMessage bounds one NEWSETELEM message: a netlink attribute
	// holds at most 64 KiB, so big sets are sent as several messages (all in
	// the same batch).
	elementsPerMessage = 1000
	// minSocketBuffer is the netlink socket buffer forced for a batch; big
	// DoH sets raise it (the default 208 KiB fails with EMSGSIZE).
	minSocketBuffer = 1 << 20
	bytesPerElement = 64 // generous estimate of one encoded interval element
)

// conn opens an nftables connection in the firewall's namespace. sockBuf > 0
// forces the socket buffers, as nft does for large batches.
func (f *Firewall) conn(sockBuf int) (*nftables.Conn, error) {
	opts := []nftables.ConnOption{}
	if f.netns != 0 {
		opts = append(opts, nftables.WithNetNSFd(f.netns))
	}
	if f.dial != nil {
		opts = append(opts, nftables.WithTestDial(f.dial))
	} else if sockBuf > 0 {
		opts = append(opts, nftables.WithSockOptions(func(c *netlink.Conn) error {
			return forceBuffers(c, sockBuf)
		}))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink: %w", err)
	}
	return c, nil
}

func forceBuffers(c *netlink.Conn, size int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size); serr != nil {
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("set netlink socket buffers to %d: %w", size, err)
	}
	return nil
}

func nfTable(name string) *nftables.Table {
	return &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
}

// send replaces the table with rs in one batch: add (creates it when
// missing), delete, add again with everything in it. The kernel commits the
// batch atomically, so packets see either the old table or the new one, and
// a table left behind by a killed process is replaced, never duplicated.
func (f *Firewall) send(rs *ruleset, seed map[Reason]Counter) error {
	// The learned pairs are re-installed in the same batch from the
	// userspace map; the learned-set writer waits meanwhile.
	f.learnMu.Lock()
	defer f.learnMu.Unlock()
	now := time.Now().UnixNano()
	learned := map[string][]nftables.SetElement{}
	elems := 0
	for _, s := range rs.sets {
		elems += 2 * len(s.ranges)
		if s.learned {
			learned[s.name] = f.learnedElements(s.v6, now)
			elems += len(learned[s.name])
		}
	}
	c, err := f.conn(max(minSocketBuffer, elems*bytesPerElement*2))
	if err != nil {
		return err
	}
	t := nfTable(rs.table)
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	for _, r := range rs.counters {
		v := seed[r]
		c.AddObj(&nftables.CounterObj{Table: t, Name: string(r), Packets: v.Packets, Bytes: v.Bytes})
	}
	for _, s := range rs.sets {
		ns := &nftables.Set{Table: t, Name: s.name, ID: s.id, KeyType: nftables.TypeIPAddr, Interval: s.interval}
		if s.peer != "" {
			ns.Dynamic, ns.HasTimeout, ns.Timeout, ns.Size = true, true, peerSetTimeout, peerSetSize
		}
		if s.v6 {
			ns.KeyType = nftables.TypeIP6Addr
		}
		els := s.elements()
		if s.learned {
			ns, els = learnedSet(t, s), learned[s.name]
		}
		if err := c.AddSet(ns, nil); err != nil {
			return fmt.Errorf("add set %q: %w", s.name, err)
		}
		for i := 0; i < len(els); i += elementsPerMessage {
			if err := c.SetAddElements(ns, els[i:min(i+elementsPerMessage, len(els))]); err != nil {
				return fmt.Errorf("add elements to set %q: %w", s.name, err)
			}
		}
	}
	chains := make(map[string]*nftables.Chain, len(rs.chains))
	for _, ch := range rs.chains {
		nc := &nftables.Chain{Name: ch.name, Table: t}
		if ch.base != nil {
			policy := nftables.ChainPolicyAccept
			nc.Type, nc.Hooknum, nc.Priority, nc.Policy = ch.base.typ, ch.base.hook, nftables.ChainPriorityRef(nftables.ChainPriority(ch.base.prio)), &policy
		}
		chains[ch.name] = c.AddChain(nc)
	}
	for _, ch := range rs.chains {
		for _, r := range ch.rules {
			c.AddRule(&nftables.Rule{Table: t, Chain: chains[ch.name], Exprs: r.exprs()})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply firewall table %q: %w", rs.table, err)
	}
	f.learnTable = ""
	if len(learned) > 0 {
		f.learnTable = rs.table
	}
	f.gating.Store(len(learned) > 0)
	return nil
}

// elements encodes the set for the kernel: plain keys, or for an interval
// set a start key and an end key (first address after the range) per range.
func (s *set) elements() []nftables.SetElement {
	out := make([]nftables.SetElement, 0, 2*len(s.ranges))
	for _, r := range s.ranges {
		out = append(out, nftables.SetElement{Key: r.from.AsSlice()})
		if !s.interval {
			continue
		}
		if end := r.to.Next(); end.IsValid() {
			out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

// tableOwner returns the WireGuard interface the table's rules match (the
// first meta iifname comparison of a base chain), "" when the table is
// missing or matches no interface.
func tableOwner(c *nftables.Conn, table string) (string, error) {
	ok, err := tableExists(c, table)
	if err != nil || !ok {
		return "", err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return "", fmt.Errorf("list chains of table %q: %w", table, err)
	}
	t := nfTable(table)
	for _, ch := range chains {
		if ch.Table.Name != table || ch.Hooknum == nil {
			continue
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return "", fmt.Errorf("list rules of chain %q: %w", ch.Name, err)
		}
		if name := rulesIfname(rules); name != "" {
			return name, nil
		}
	}
	return "", nil
}

// rulesIfname returns the interface of the first `meta iifname == NAME`
// match in rules, "" when none has one.
func rulesIfname(rules []*nftables.Rule) string {
	for _, r := range rules {
		for i := 0; i+1 < len(r.Exprs); i++ {
			m, ok := r.Exprs[i].(*expr.Meta)
			if !ok || m.Key != expr.MetaKeyIIFNAME || m.SourceRegister {
				continue
			}
			if cmp, ok := r.Exprs[i+1].(*expr.Cmp); ok && cmp.Op == expr.CmpOpEq && cmp.Register == m.Register {
				return string(bytes.TrimRight(cmp.Data, "\x00"))
			}
		}
	}
	return ""
}

// checkOwner refuses to replace a table whose rules match another
// interface: it belongs to another sluice (or one that was killed and left
// it in place, failing closed), whose peers would lose their enforcement.
func (f *Firewall) checkOwner(s Spec) error {
	c, err := f.conn(0)
	if err != nil {
		return err
	}
	owner, err := tableOwner(c, s.Table)
	if err != nil {
		return err
	}
	if owner != "" && owner != s.Interface {
		return fmt.Errorf("%w: table inet %s enforces interface %s, not %s (another sluice uses it, or a stopped one left it in place); give this instance its own enforce.table, or remove the old table with: nft delete table inet %s",
			ErrTableInUse, s.Table, owner, s.Interface, s.Table)
	}
	return nil
}

// errNoTable reports that the table is not in the kernel.
var errNoTable = errors.New("table not present")

// tableExists lists the inet tables and looks for name.
func tableExists(c *nftables.Conn, name string) (bool, error) {
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range ts {
		if t.Name == name {
			return true, nil
		}
	}
	return false, nil
}

// readCounters reads the named counters of table from the kernel.
func (f *Firewall) readCounters(table string) (map[Reason]Counter, error) {
	c, err := f.conn(0)
	if err != nil {
		return nil, err
	}
	ok, err := tableExists(c, table)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("read counters of table %q: %w", table, errNoTable)
	}
	objs, err := c.GetObjects(nfTable(table))
	if err != nil {
		return nil, fmt.Errorf("read counters of table %q: %w", table, err)
	}
	out := make(map[Reason]Counter, len(objs))
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok {
			out[Reason(co.Name)] = Counter{Packets: co.Packets, Bytes: co.Bytes}
		}
	}
	return out, nil
}

// drift compares the kernel's table with rs: presence, chains, rule counts,
// sets and counters. It returns "" when they match, else what differs.
func (f *Firewall) drift(rs *ruleset) (string, error) {
	c, err := f.conn(0)
	if err != nil {
		return "", err
	}
	ok, err := tableExists(c, rs.table)
	if err != nil {
		return "", err
	}
	if !ok {
		return "table missing", nil
	}
	t := nfTable(rs.table)
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return "", fmt.Errorf("list chains of table %q: %w", rs.table, err)
	}
	have := map[string]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table.Name == rs.table {
			have[ch.Name] = ch
		}
	}
	if len(have) != len(rs.chains) {
		return fmt.Sprintf("%d chains, want %d", len(have), len(rs.chains)), nil
	}
	owner := ""
	for _, ch := range rs.chains {
		kc, ok := have[ch.name]
		if !ok {
			return fmt.Sprintf("chain %s missing", ch.name), nil
		}
		rules, err := c.GetRules(t, kc)
		if err != nil {
			return "", fmt.Errorf("list rules of chain %q: %w", ch.name, err)
		}
		if len(rules) != len(ch.rules) {
			return fmt.Sprintf("chain %s has %d rules, want %d", ch.name, len(rules), len(ch.rules)), nil
		}
		if owner == "" && kc.Hooknum != nil {
			owner = rulesIfname(rules)
		}
	}
	if owner != rs.iface {
		return fmt.Sprintf("table enforces interface %q, not %q", owner, rs.iface), nil
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return "", fmt.Errorf("list sets of table %q: %w", rs.table, err)
	}
	if len(sets) != len(rs.sets) {
		return fmt.Sprintf("%d sets, want %d", len(sets), len(rs.sets)), nil
	}
	return "", nil
}

// deleteTable removes the table when present, in one batch.
func (f *Firewall) deleteTable(name string) error {
	c, err := f.conn(0)
	if err != nil {
		return err
	}
	// Add-then-delete in one batch: never fails on a missing table and
	// never races with another process creating it.
	t := nfTable(name)
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete firewall table %q: %w", name, err)
	}
	return nil
}
