package dnsproxy

import (
	"encoding/binary"
	"net/netip"
)

// Wire-format offsets and bits used by the fast path.
const (
	headerLen = 12

	flagQR     = 0x8000
	flagOpcode = 0x7800
	flagAA     = 0x0400
	flagTC     = 0x0200
	flagRD     = 0x0100
	flagAD     = 0x0020
	flagCD     = 0x0010

	ednsDO = 0x8000

	typeA    = 1
	typeSOA  = 6
	typeAAAA = 28
	typeOPT  = 41

	dnsRcodeSuccess   = 0
	dnsRcodeNameError = 3

	maxNameWire = 255
	// keyMax is the longest cache key: a wire name, qtype, qclass, flags.
	keyMax = maxNameWire + 5

	keyFlagDO = 1
	keyFlagCD = 2
)

// query is what the fast path learns from a request without unpacking it.
type query struct {
	id       uint16
	flags    uint16
	nameLen  int // wire length of the question name, including the root label
	qtype    uint16
	qclass   uint16
	edns     bool
	do       bool
	udpSize  uint16
	questEnd int // offset just past the question
}

// parseQuery reads the header, the single question and an optional trailing
// OPT record from pkt, writing the case-folded cache key into key. It accepts
// only the plain shape a stub resolver sends; everything else (and every
// malformed packet) returns ok=false and takes the slow path.
func parseQuery(pkt []byte, q *query, key *[keyMax]byte) (keyLen int, ok bool) {
	if len(pkt) < headerLen+5 {
		return 0, false
	}
	q.id = binary.BigEndian.Uint16(pkt[0:])
	q.flags = binary.BigEndian.Uint16(pkt[2:])
	if q.flags&(flagQR|flagOpcode|flagTC) != 0 {
		return 0, false
	}
	if binary.BigEndian.Uint16(pkt[4:]) != 1 || binary.BigEndian.Uint16(pkt[6:]) != 0 ||
		binary.BigEndian.Uint16(pkt[8:]) != 0 {
		return 0, false
	}
	arcount := binary.BigEndian.Uint16(pkt[10:])
	if arcount > 1 {
		return 0, false
	}
	// Walk the labels' length bytes, then fold the whole name at once
	// (length bytes are < 64, never in A-Z, so folding leaves them alone).
	off := headerLen
	for {
		if off >= len(pkt) {
			return 0, false
		}
		l := int(pkt[off])
		off++
		if l == 0 {
			break
		}
		if l > 63 {
			return 0, false
		}
		off += l
	}
	n := off - headerLen
	if n > maxNameWire {
		return 0, false
	}
	foldCopy(key[:n], pkt[headerLen:off])
	q.nameLen = n
	if off+4 > len(pkt) {
		return 0, false
	}
	q.qtype = binary.BigEndian.Uint16(pkt[off:])
	q.qclass = binary.BigEndian.Uint16(pkt[off+2:])
	off += 4
	q.questEnd = off
	q.edns, q.do, q.udpSize = false, false, 0
	if arcount == 1 {
		// OPT: root name, type 41, class = UDP size, TTL = ercode|version|flags, rdlen, rdata.
		if off+11 > len(pkt) || pkt[off] != 0 || binary.BigEndian.Uint16(pkt[off+1:]) != typeOPT {
			return 0, false
		}
		q.udpSize = binary.BigEndian.Uint16(pkt[off+3:])
		if pkt[off+6] != 0 { // EDNS version other than 0: slow path answers BADVERS
			return 0, false
		}
		q.do = binary.BigEndian.Uint16(pkt[off+7:])&ednsDO != 0
		rdlen := int(binary.BigEndian.Uint16(pkt[off+9:]))
		off += 11 + rdlen
		q.edns = true
	}
	if off != len(pkt) {
		return 0, false
	}
	key[n] = byte(q.qtype >> 8)
	key[n+1] = byte(q.qtype)
	key[n+2] = byte(q.qclass >> 8)
	key[n+3] = byte(q.qclass)
	var f byte
	if q.do {
		f |= keyFlagDO
	}
	if q.flags&flagCD != 0 {
		f |= keyFlagCD
	}
	key[n+4] = f
	return n + 5, true
}

// maxUDPSize is the largest answer the client accepts over UDP: 512 without
// EDNS, else its advertised size clamped to [512, ourMax].
func maxUDPSize(edns bool, size uint16, ourMax int) int {
	if !edns {
		return minEDNSBufferSize
	}
	return min(max(int(size), minEDNSBufferSize), ourMax)
}

// skipName returns the offset just past the (possibly compressed) name at off.
func skipName(msg []byte, off int) (int, bool) {
	for i := 0; i < 128; i++ {
		if off >= len(msg) {
			return 0, false
		}
		l := int(msg[off])
		switch {
		case l == 0:
			return off + 1, true
		case l&0xC0 == 0xC0:
			if off+2 > len(msg) {
				return 0, false
			}
			return off + 2, true
		case l > 63:
			return 0, false
		}
		off += 1 + l
	}
	return 0, false
}

// ttlOffsets returns the offsets of the TTL field of every record after the
// question in msg (which must have exactly one question and no OPT record).
func ttlOffsets(msg []byte) ([]uint16, bool) {
	if len(msg) < headerLen || len(msg) > 0xFFFF {
		return nil, false
	}
	if binary.BigEndian.Uint16(msg[4:]) != 1 {
		return nil, false
	}
	count := int(binary.BigEndian.Uint16(msg[6:])) + int(binary.BigEndian.Uint16(msg[8:])) +
		int(binary.BigEndian.Uint16(msg[10:]))
	off, ok := skipName(msg, headerLen)
	if !ok || off+4 > len(msg) {
		return nil, false
	}
	off += 4
	offs := make([]uint16, 0, count)
	for range count {
		if off, ok = skipName(msg, off); !ok || off+10 > len(msg) {
			return nil, false
		}
		if binary.BigEndian.Uint16(msg[off:]) == typeOPT {
			return nil, false
		}
		offs = append(offs, uint16(off+4))
		rdlen := int(binary.BigEndian.Uint16(msg[off+8:]))
		off += 10 + rdlen
		if off > len(msg) {
			return nil, false
		}
	}
	if off != len(msg) {
		return nil, false
	}
	return offs, true
}

// appendOPT appends a bare OPT record advertising size and the DO bit.
func appendOPT(b []byte, size int, do bool) []byte {
	var flags byte
	if do {
		flags = 0x80
	}
	return append(b, 0, 0, typeOPT, byte(size>>8), byte(size), 0, 0, flags, 0, 0, 0)
}

// truncateWire rewrites resp (header and question as the client sent them,
// followed by records) into header+question+OPT with TC set.
func truncateWire(resp []byte, questEnd int, edns bool, size int, do bool) []byte {
	resp = resp[:questEnd]
	resp[2] |= flagTC >> 8
	binary.BigEndian.PutUint16(resp[6:], 0)
	binary.BigEndian.PutUint16(resp[8:], 0)
	binary.BigEndian.PutUint16(resp[10:], 0)
	if edns {
		resp = appendOPT(resp, size, do)
		binary.BigEndian.PutUint16(resp[10:], 1)
	}
	return resp
}

// foldCopy copies src to dst (len(dst) == len(src)) with A-Z lowered,
// eight bytes at a time.
func foldCopy(dst, src []byte) {
	i := 0
	for ; i+8 <= len(src); i += 8 {
		binary.LittleEndian.PutUint64(dst[i:], lower8(binary.LittleEndian.Uint64(src[i:])))
	}
	for ; i < len(src); i++ {
		c := src[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst[i] = c
	}
}

// lower8 lowers the bytes A-Z of the eight in x and leaves every other
// byte as it is, without a branch: per byte, bit 7 of ge is set when its
// low seven bits are >= 'A', of gt when they are > 'Z' (no sum carries into
// the next byte), and bytes with bit 7 set are no letter.
func lower8(x uint64) uint64 {
	const ones, high = 0x0101010101010101, 0x8080808080808080
	h := x &^ high
	ge := h + (0x80-'A')*ones
	gt := h + (0x80-'Z'-1)*ones
	upper := ge &^ gt &^ x & high
	return x | upper>>2
}

// cacheWire rewrites an upstream answer in place into the form the cache
// keeps (what newCacheEntry packs from a message): ID 0, TC clear, the
// question name in lower case, a final OPT record dropped, every TTL capped
// to secs. It returns the message and its TTL offsets, or false for any
// other shape (a compressed question name, OPT anywhere but last, bytes
// after the last record), which the caller handles from the message.
func cacheWire(msg []byte, secs uint32) ([]byte, []uint16, bool) {
	if len(msg) < headerLen || len(msg) > 0xFFFF || binary.BigEndian.Uint16(msg[4:]) != 1 {
		return nil, nil, false
	}
	off := headerLen
	for {
		if off >= len(msg) {
			return nil, nil, false
		}
		l := int(msg[off])
		off++
		if l == 0 {
			break
		}
		if l > 63 { // a pointer or an unknown label type
			return nil, nil, false
		}
		off += l
	}
	nameEnd := off
	if nameEnd-headerLen > maxNameWire || off+4 > len(msg) {
		return nil, nil, false
	}
	off += 4
	arcount := int(binary.BigEndian.Uint16(msg[10:]))
	count := int(binary.BigEndian.Uint16(msg[6:])) + int(binary.BigEndian.Uint16(msg[8:])) + arcount
	offs := make([]uint16, 0, count)
	end := len(msg)
	for i := range count {
		start := off
		var ok bool
		if off, ok = skipName(msg, off); !ok || off+10 > len(msg) {
			return nil, nil, false
		}
		next := off + 10 + int(binary.BigEndian.Uint16(msg[off+8:]))
		if next > len(msg) {
			return nil, nil, false
		}
		if binary.BigEndian.Uint16(msg[off:]) == typeOPT {
			if i != count-1 || next != len(msg) || arcount == 0 {
				return nil, nil, false
			}
			end = start
			binary.BigEndian.PutUint16(msg[10:], uint16(arcount-1))
			off = next
			break
		}
		if binary.BigEndian.Uint32(msg[off+4:]) > secs {
			binary.BigEndian.PutUint32(msg[off+4:], secs)
		}
		offs = append(offs, uint16(off+4))
		off = next
	}
	if off != len(msg) {
		return nil, nil, false
	}
	msg = msg[:end]
	binary.BigEndian.PutUint16(msg[0:], 0)
	msg[2] &^= byte(flagTC >> 8)
	foldCopy(msg[headerLen:nameEnd], msg[headerLen:nameEnd])
	return msg, offs, true
}

// answerFacts is what the cache needs to know of an upstream answer, read
// from its bytes (readAnswer) instead of an unpacked message: the rules of
// cacheTTL, answerAddrs and otherZones on the wire.
type answerFacts struct {
	rcode   int
	ttl     uint32 // the answer's cache TTL (cacheTTL) before the max_ttl cap
	addrs   []netip.Addr
	addrTTL uint32
	// names are the offsets of answer owner names other than a pointer to
	// the question (for otherZones).
	names []uint16
}

// readAnswer reads an upstream's answer of the shape cacheWire keeps (one
// uncompressed question, OPT only last) that is cacheable: NOERROR or
// NXDOMAIN, no TC, no extended rcode, and a TTL (records, or the SOA of a
// negative answer). Anything else returns false and is left to the
// general path, which unpacks it.
func readAnswer(msg []byte) (answerFacts, bool) {
	var f answerFacts
	if len(msg) < headerLen || binary.BigEndian.Uint16(msg[4:]) != 1 {
		return f, false
	}
	flags := binary.BigEndian.Uint16(msg[2:])
	f.rcode = int(flags & 0xF)
	if flags&(flagQR|flagTC) != flagQR || (f.rcode != dnsRcodeSuccess && f.rcode != dnsRcodeNameError) {
		return f, false
	}
	off := headerLen
	for {
		if off >= len(msg) {
			return f, false
		}
		l := int(msg[off])
		off++
		if l == 0 {
			break
		}
		if l > 63 {
			return f, false
		}
		off += l
	}
	off += 4
	an := int(binary.BigEndian.Uint16(msg[6:]))
	ns := int(binary.BigEndian.Uint16(msg[8:]))
	count := an + ns + int(binary.BigEndian.Uint16(msg[10:]))
	minTTL, soaTTL, haveSOA := uint32(1<<31-1), uint32(0), false
	for i := range count {
		start := off
		var ok bool
		if off, ok = skipName(msg, off); !ok || off+10 > len(msg) {
			return f, false
		}
		typ := binary.BigEndian.Uint16(msg[off:])
		ttl := binary.BigEndian.Uint32(msg[off+4:])
		rdata := off + 10
		next := rdata + int(binary.BigEndian.Uint16(msg[off+8:]))
		if next > len(msg) {
			return f, false
		}
		if typ == typeOPT {
			if i != count-1 || next != len(msg) || msg[off+4] != 0 { // last, and no extended rcode
				return f, false
			}
			off = next
			break
		}
		minTTL = min(minTTL, ttl)
		switch {
		case i < an:
			if msg[start] != 0xC0 || msg[start+1] != headerLen {
				f.names = append(f.names, uint16(start))
			}
			var a netip.Addr
			switch {
			case typ == typeA && next-rdata == 4:
				a = netip.AddrFrom4([4]byte(msg[rdata:next]))
			case typ == typeAAAA && next-rdata == 16:
				a = netip.AddrFrom16([16]byte(msg[rdata:next])).Unmap()
			}
			if a.IsValid() {
				f.addrs = append(f.addrs, a)
				f.addrTTL = max(f.addrTTL, ttl)
			}
		case i < an+ns && typ == typeSOA && !haveSOA:
			// mname, rname, then serial, refresh, retry, expire, minimum
			p, ok := skipName(msg, rdata)
			if ok {
				p, ok = skipName(msg, p)
			}
			if !ok || p+20 != next {
				return f, false
			}
			soaTTL, haveSOA = min(ttl, binary.BigEndian.Uint32(msg[p+16:])), true
		}
		off = next
	}
	if off != len(msg) {
		return f, false
	}
	switch {
	case f.rcode == dnsRcodeSuccess && an > 0:
		f.ttl = minTTL
	case haveSOA:
		f.ttl = soaTTL
	default:
		return f, false
	}
	return f, true
}

// answerMatchesWire is answerMatches on the answer's bytes: same ID, QR
// set, one question, the same name (ignoring case), type and class.
func answerMatchesWire(uq *upQuery, r []byte) bool {
	q := uq.wire
	if len(r) < headerLen || binary16(r) != uq.id() || r[2]&0x80 == 0 || binary16(r[4:]) != 1 {
		return false
	}
	// The question of uq.wire ends 11 bytes (its OPT) before its end.
	qEnd := len(q) - 11
	n := qEnd - headerLen
	if len(r) < headerLen+n {
		return false
	}
	for i := headerLen; i < qEnd; i++ {
		a, b := r[i], q[i]
		if a >= 'A' && a <= 'Z' {
			a += 'a' - 'A'
		}
		if b >= 'A' && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

func binary16(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

// keyAndName returns the cache key (key's bytes) and the question name
// qname (wire form, no compression, as parseQuery read it) in the
// presentation form wireName gives, from one allocation: the miss path
// keeps both for as long as the miss and its cache entry live, and every
// allocation is fresh memory the miss has to touch.
func keyAndName(key, qname []byte) (string, string) {
	var buf [keyMax + maxNameWire]byte
	b := append(buf[:0], key...)
	if b, ok := appendPlainName(b, qname); ok {
		s := string(b)
		return s[:len(key)], s[len(key):]
	}
	return string(key), wireName(qname)
}

// appendPlainName appends the presentation form of the wire name qname to
// b when no byte of it needs escaping (which miekg/dns escapes:
// control, non-ASCII, space and .'@;()"\ ) and the name is within the
// length miekg/dns accepts; false otherwise, for wireName to write it.
func appendPlainName(b, qname []byte) ([]byte, bool) {
	if len(qname) == 1 && qname[0] == 0 {
		return append(b, '.'), true
	}
	for off := 0; off < len(qname); {
		l := int(qname[off])
		if l == 0 {
			return b, off < maxNameWire
		}
		if l > 63 || off+1+l > len(qname) {
			return b, false
		}
		for _, c := range qname[off+1 : off+1+l] {
			if c <= ' ' || c > '~' {
				return b, false
			}
			switch c {
			case '.', '\'', '@', ';', '(', ')', '"', '\\':
				return b, false
			}
		}
		b = append(b, qname[off+1:off+1+l]...)
		b = append(b, '.')
		off += 1 + l
	}
	return b, false
}
