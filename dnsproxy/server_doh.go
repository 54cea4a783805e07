package dnsproxy

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

const (
	dohContentType = "application/dns-message"
	// dohMaxGetParam bounds the base64url "dns" parameter of a GET: a
	// 65535-byte message is 87380 characters.
	dohMaxGetParam = 87384
	// dohReadTimeout bounds reading one request, body included.
	dohReadTimeout = 10 * time.Second
	dohMaxHeader   = 8 << 10
)

// dohError is a request the DoH parser refuses, with its HTTP status.
type dohError struct {
	status int
	msg    string
}

func (e *dohError) Error() string { return e.msg }

// parseDoHRequest returns the DNS message of an RFC 8484 request: GET with
// a base64url "dns" parameter (padding tolerated), or POST with a body of
// type application/dns-message, at most 65535 bytes. Anything else is a
// *dohError naming the status to answer: 405 other methods, 415 a wrong
// content type, 413 an oversized body, 400 a malformed or missing message.
func parseDoHRequest(r *http.Request) ([]byte, error) {
	return appendDoHRequest(nil, r)
}

// appendDoHRequest is parseDoHRequest appending the message to dst (the
// handler passes a pooled buffer); on an error the result is nil.
func appendDoHRequest(dst []byte, r *http.Request) ([]byte, error) {
	msg := dst[:0]
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		// Read the raw query: url.Values would also split on ';' and unescape '+'.
		param, found := "", false
		for part := range strings.SplitSeq(r.URL.RawQuery, "&") {
			if v, ok := strings.CutPrefix(part, "dns="); ok {
				param, found = v, true
				break
			}
		}
		if !found || param == "" {
			return nil, &dohError{http.StatusBadRequest, "missing dns parameter"}
		}
		if len(param) > dohMaxGetParam {
			return nil, &dohError{http.StatusRequestURITooLong, "dns parameter too long"}
		}
		var err error
		if msg, err = base64.RawURLEncoding.AppendDecode(msg, []byte(strings.TrimRight(param, "="))); err != nil {
			return nil, &dohError{http.StatusBadRequest, "dns parameter is not base64url"}
		}
	case http.MethodPost:
		if !isDoHContentType(r.Header["Content-Type"]) {
			return nil, &dohError{http.StatusUnsupportedMediaType, "content type must be " + dohContentType}
		}
		if r.ContentLength > dns.MaxMsgSize {
			return nil, &dohError{http.StatusRequestEntityTooLarge, "dns message larger than 65535 bytes"}
		}
		body := r.Body
		if body == nil {
			body = http.NoBody
		}
		var err error
		msg, err = appendBody(msg, body, r.ContentLength)
		if err != nil {
			return nil, &dohError{http.StatusBadRequest, "read body"}
		}
		if len(msg) > dns.MaxMsgSize {
			return nil, &dohError{http.StatusRequestEntityTooLarge, "dns message larger than 65535 bytes"}
		}
	default:
		return nil, &dohError{http.StatusMethodNotAllowed, "use GET or POST"}
	}
	if len(msg) < headerLen {
		return nil, &dohError{http.StatusBadRequest, "dns message shorter than its header"}
	}
	if len(msg) > dns.MaxMsgSize {
		return nil, &dohError{http.StatusRequestEntityTooLarge, "dns message larger than 65535 bytes"}
	}
	if msg[2]&0x80 != 0 {
		return nil, &dohError{http.StatusBadRequest, "not a query"}
	}
	return msg, nil
}

// isDoHContentType reports whether the Content-Type values name
// application/dns-message (parameters allowed); the exact value, what
// clients send, skips the media type parser.
func isDoHContentType(vs []string) bool {
	if len(vs) == 0 {
		return false
	}
	if vs[0] == dohContentType {
		return true
	}
	ct, _, err := mime.ParseMediaType(vs[0])
	return err == nil && ct == dohContentType
}

// appendBody appends body to dst, at most dns.MaxMsgSize+1 bytes (the
// caller refuses more), growing dst once by the declared length n when it
// is known.
func appendBody(dst []byte, body io.Reader, n int64) ([]byte, error) {
	start := len(dst)
	if n >= 0 && n <= dns.MaxMsgSize {
		dst = slices.Grow(dst, int(n)+1) // +1: the EOF read needs room
	}
	for len(dst)-start <= dns.MaxMsgSize {
		if len(dst) == cap(dst) {
			dst = slices.Grow(dst, 512)
		}
		room := dst[len(dst):min(cap(dst), start+dns.MaxMsgSize+1)]
		k, err := body.Read(room)
		dst = dst[:len(dst)+k]
		if err == io.EOF {
			return dst, nil
		}
		if err != nil {
			return dst, err
		}
	}
	return dst, nil
}

// dohBuf is a handler's pooled request and response buffers.
type dohBuf struct{ req, resp []byte }

// dohBufMax is the largest buffer put back in the pool: big messages are rare.
const dohBufMax = 4 << 10

var dohBufs = sync.Pool{New: func() any { return &dohBuf{req: make([]byte, 0, 512), resp: make([]byte, 0, 1232)} }}

// Header values shared by every answer (net/http only reads them).
var (
	dohContentTypeHdr = []string{dohContentType}
)

// dohHandler serves dohPath; every answered query takes the proxy's one
// request path (answerWire).
func (p *Proxy) dohHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != dohPath {
			http.NotFound(w, r)
			return
		}
		buf := dohBufs.Get().(*dohBuf)
		defer func() {
			if cap(buf.req) <= dohBufMax && cap(buf.resp) <= dohBufMax {
				dohBufs.Put(buf)
			}
		}()
		pkt, err := appendDoHRequest(buf.req, r)
		if pkt != nil {
			buf.req = pkt[:0]
		}
		if err != nil {
			var de *dohError
			status := http.StatusBadRequest
			if errors.As(err, &de) {
				status = de.status
			}
			if status == http.StatusMethodNotAllowed {
				w.Header().Set("Allow", "GET, HEAD, POST")
			}
			p.enc.badRequests.Inc()
			http.Error(w, err.Error(), status)
			return
		}
		src, _ := netip.ParseAddrPort(r.RemoteAddr)
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		out := p.answerWire(r.Context(), buf.resp[:0], pkt, src, TransportDoH)
		if out != nil {
			buf.resp = out[:0]
		}
		if out == nil {
			p.enc.badRequests.Inc()
			http.Error(w, "malformed dns message", http.StatusBadRequest)
			return
		}
		h := w.Header()
		h["Content-Type"] = dohContentTypeHdr
		h.Set("Content-Length", strconv.Itoa(len(out)))
		if ttl, ok := minTTL(out); ok {
			h.Set("Cache-Control", "max-age="+strconv.FormatUint(uint64(ttl), 10))
		}
		if r.Method == http.MethodHead {
			return
		}
		w.Write(out) //nolint:errcheck // the client may be gone
	})
}

// minTTL is the smallest TTL of the answer and authority records of msg
// (RFC 8484 section 5.1: the freshness lifetime of a DoH answer).
func minTTL(msg []byte) (uint32, bool) {
	if len(msg) < headerLen {
		return 0, false
	}
	qd := int(binary.BigEndian.Uint16(msg[4:]))
	rrs := int(binary.BigEndian.Uint16(msg[6:])) + int(binary.BigEndian.Uint16(msg[8:]))
	off := headerLen
	skipName := func() bool {
		for off < len(msg) {
			l := int(msg[off])
			switch {
			case l == 0:
				off++
				return true
			case l&0xC0 == 0xC0:
				off += 2
				return off <= len(msg)
			case l > 63:
				return false
			}
			off += 1 + l
		}
		return false
	}
	for range qd {
		if !skipName() || off+4 > len(msg) {
			return 0, false
		}
		off += 4
	}
	var ttl uint32
	found := false
	for range rrs {
		if !skipName() || off+10 > len(msg) {
			return 0, false
		}
		t := binary.BigEndian.Uint32(msg[off+4:])
		if !found || t < ttl {
			ttl, found = t, true
		}
		off += 10 + int(binary.BigEndian.Uint16(msg[off+8:]))
	}
	return ttl, found
}

// dohServer is DNS over HTTPS (RFC 8484) on one address: HTTP/2 and
// HTTP/1.1 over TLS 1.2 or later.
type dohServer struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}

	mu    sync.Mutex // protects conns
	conns int
}

func (p *Proxy) newDoHServer(ln net.Listener, cfg EncryptedConfig) *dohServer {
	s := &dohServer{ln: ln, done: make(chan struct{})}
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	s.srv = &http.Server{
		Handler:           p.dohHandler(),
		TLSConfig:         p.serverTLSConfig(),
		Protocols:         protos,
		ReadHeaderTimeout: min(tlsHandshakeTimeout, cfg.IdleTimeout), // handshake and headers: slow clients go
		ReadTimeout:       dohReadTimeout,
		WriteTimeout:      dohReadTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    dohMaxHeader,
		ErrorLog:          log.New(&dohErrorLog{p: p}, "", 0),
		BaseContext:       func(net.Listener) context.Context { return p.ctx },
		ConnState: func(c net.Conn, cs http.ConnState) {
			switch cs {
			case http.StateNew:
				s.mu.Lock()
				over := s.conns >= cfg.MaxConns
				if !over {
					s.conns++
				}
				s.mu.Unlock()
				if over {
					p.enc.refusedConns[TransportDoH].Inc()
					c.Close()
					return
				}
				p.enc.conns[TransportDoH].Inc()
			case http.StateClosed, http.StateHijacked:
				s.mu.Lock()
				s.conns--
				s.mu.Unlock()
				p.enc.conns[TransportDoH].Dec()
			}
		},
	}
	go func() {
		defer close(s.done)
		if err := s.srv.ServeTLS(coalescingListener{ln}, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.log.Error("doh listener stopped", "addr", ln.Addr().String(), "error", err)
		}
	}()
	return s
}

// close stops accepting, lets requests in progress finish (bounded) and
// waits for the server.
func (s *dohServer) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), encryptedWriteTimeout)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(fmt.Errorf("shut down doh listener: %w", err), s.srv.Close())
	}
	<-s.done
	return err
}

// dohErrorLog receives net/http's error log: TLS handshake failures are
// counted, everything goes to the debug log.
type dohErrorLog struct{ p *Proxy }

func (l *dohErrorLog) Write(b []byte) (int, error) {
	if bytes.Contains(b, []byte("TLS handshake error")) {
		l.p.enc.handshakeErrors[TransportDoH].Inc()
	}
	l.p.log.Debug("doh server", "message", string(bytes.TrimSpace(b)))
	return len(b), nil
}
