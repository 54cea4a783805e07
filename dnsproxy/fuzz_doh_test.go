package dnsproxy

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"net/http"
	"testing"

	"github.com/miekg/dns"
)

// FuzzDoHRequest feeds raw HTTP/1.1 requests to the DoH request parser.
// Whatever the input it must not panic; an accepted request yields a query
// (QR clear) of 12 to 65535 bytes, a refused one a *dohError with one of
// the statuses the handler documents.
func FuzzDoHRequest(f *testing.F) {
	m := new(dns.Msg)
	m.SetQuestion("www.example.", dns.TypeA)
	wire, _ := m.Pack()
	b64 := base64.RawURLEncoding.EncodeToString(wire)
	f.Add([]byte("GET /dns-query?dns=" + b64 + " HTTP/1.1\r\nHost: dns.test\r\nAccept: application/dns-message\r\n\r\n"))
	f.Add([]byte("GET /dns-query?ct&dns=" + b64 + "== HTTP/1.1\r\nHost: dns.test\r\n\r\n"))
	f.Add(append([]byte("POST /dns-query HTTP/1.1\r\nHost: dns.test\r\nContent-Type: application/dns-message\r\nContent-Length: 29\r\n\r\n"), wire...))
	f.Add([]byte("POST /dns-query HTTP/1.1\r\nHost: dns.test\r\nContent-Type: application/dns-message; charset=x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n"))
	f.Add([]byte("PUT /dns-query HTTP/1.1\r\nHost: x\r\n\r\n"))
	allowed := map[int]bool{400: true, 405: true, 413: true, 414: true, 415: true}
	f.Fuzz(func(t *testing.T, raw []byte) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return
		}
		msg, err := parseDoHRequest(req)
		if err != nil {
			var de *dohError
			if !errors.As(err, &de) || !allowed[de.status] {
				t.Fatalf("error %v (%T) has no documented status", err, err)
			}
			if msg != nil {
				t.Fatal("message returned with an error")
			}
			return
		}
		if len(msg) < headerLen || len(msg) > dns.MaxMsgSize || msg[2]&0x80 != 0 {
			t.Fatalf("accepted %d bytes, flags %x", len(msg), msg[2])
		}
	})
}
