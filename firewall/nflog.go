package firewall

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// EgressEvent is one new peer flow the egress gate refused (or, in audit,
// would have refused), as logged by the table's rate-limited log rule.
type EgressEvent struct {
	Time    time.Time  `json:"time"`
	Src     netip.Addr `json:"src"`
	Dst     netip.Addr `json:"dst"`
	Proto   string     `json:"proto"`          // tcp, udp, icmp, icmpv6 or the protocol number
	Port    uint16     `json:"port,omitempty"` // destination port (tcp, udp)
	Refused bool       `json:"refused"`        // false: audit, let through
}

// nfnetlink_log protocol numbers (linux/netfilter/nfnetlink_log.h); x/sys
// has the subsystem only.
const (
	nfulnlMsgPacket  = 0
	nfulnlMsgConfig  = 1
	nfulaCfgCmd      = 1
	nfulaCfgMode     = 2
	nfulaCfgQThresh  = 5
	nfulnlCfgCmdBind = 1
	nfulnlCopyPacket = 2
	nfulaPayload     = 9
	nfulaPrefix      = 10
	// nflogCopyRange is how much of each packet the kernel copies: the IP
	// header (with IPv6's 40 bytes) and the ports.
	nflogCopyRange = 128
)

// EgressEvents binds the egress NFLOG group in the firewall's namespace and
// calls fn for every logged event until ctx ends; it returns nil then. One
// socket at a time can bind a group: run one reader and fan out. fn runs on
// the reading goroutine and must not block for long (the kernel drops what
// does not fit the socket buffer; counting is done by the table anyway).
func (f *Firewall) EgressEvents(ctx context.Context, fn func(EgressEvent)) error {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: f.netns})
	if err != nil {
		return fmt.Errorf("open nflog netlink: %w", err)
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
		}
		c.Close() // unblocks Receive
	}()
	cmd := []byte{nfulnlCfgCmdBind}
	mode := binary.BigEndian.AppendUint32(nil, nflogCopyRange)
	mode = append(mode, nfulnlCopyPacket, 0)
	// One event per message, at once: the kernel's default batches up to
	// 100 packets or one second, which would hold a trace line back. The
	// rule already bounds the rate (egressLogRate).
	qthresh := binary.BigEndian.AppendUint32(nil, 1)
	for _, attr := range []netlink.Attribute{{Type: nfulaCfgCmd, Data: cmd}, {Type: nfulaCfgMode, Data: mode}, {Type: nfulaCfgQThresh, Data: qthresh}} {
		if err := nflogConfig(c, attr); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("bind nflog group %d: %w", EgressLogGroup, err)
		}
	}
	for {
		msgs, err := c.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var oe *netlink.OpError
			if errors.As(err, &oe) && errors.Is(oe.Err, unix.ENOBUFS) {
				continue // events dropped under load; the counters have them
			}
			return fmt.Errorf("read nflog: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8|nfulnlMsgPacket) {
				continue
			}
			if ev, ok := parseNflog(m.Data); ok {
				fn(ev)
			}
		}
	}
}

// nflogConfig sends one config attribute for the egress group and waits
// for the ack.
func nflogConfig(c *netlink.Conn, attr netlink.Attribute) error {
	b, err := netlink.MarshalAttributes([]netlink.Attribute{attr})
	if err != nil {
		return err
	}
	hdr := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0}
	binary.BigEndian.PutUint16(hdr[2:], EgressLogGroup)
	_, err = c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8 | nfulnlMsgConfig),
			Flags: netlink.Request | netlink.Acknowledge},
		Data: append(hdr, b...),
	})
	return err
}

// parseNflog decodes one NFULNL_MSG_PACKET: our prefix and the packet's
// addresses and destination port.
func parseNflog(data []byte) (EgressEvent, bool) {
	ev := EgressEvent{Time: time.Now()}
	if len(data) < 4 {
		return ev, false
	}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return ev, false
	}
	var prefix string
	var pkt []byte
	for ad.Next() {
		switch ad.Type() {
		case nfulaPrefix:
			prefix = strings.TrimRight(string(ad.Bytes()), "\x00")
		case nfulaPayload:
			pkt = ad.Bytes()
		}
	}
	switch prefix {
	case egressLogRefused:
		ev.Refused = true
	case egressLogAudit:
	default:
		return ev, false
	}
	return ev, parsePacket(pkt, &ev)
}

// parsePacket fills ev's addresses, protocol and port from an IP packet.
func parsePacket(pkt []byte, ev *EgressEvent) bool {
	if len(pkt) < 1 {
		return false
	}
	var proto uint8
	var l4 []byte
	switch pkt[0] >> 4 {
	case 4:
		ihl := int(pkt[0]&0x0f) * 4
		if len(pkt) < 20 || ihl < 20 {
			return false
		}
		proto = pkt[9]
		ev.Src = netip.AddrFrom4([4]byte(pkt[12:16]))
		ev.Dst = netip.AddrFrom4([4]byte(pkt[16:20]))
		if len(pkt) >= ihl {
			l4 = pkt[ihl:]
		}
	case 6:
		if len(pkt) < 40 {
			return false
		}
		proto = pkt[6] // extension headers are not walked: the port stays 0
		ev.Src = netip.AddrFrom16([16]byte(pkt[8:24]))
		ev.Dst = netip.AddrFrom16([16]byte(pkt[24:40]))
		l4 = pkt[40:]
	default:
		return false
	}
	switch proto {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP:
		ev.Proto = protoName(proto)
		if len(l4) >= 4 {
			ev.Port = binary.BigEndian.Uint16(l4[2:4])
		}
	case unix.IPPROTO_ICMP:
		ev.Proto = "icmp"
	case unix.IPPROTO_ICMPV6:
		ev.Proto = "icmpv6"
	default:
		ev.Proto = fmt.Sprint(proto)
	}
	return true
}
