package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sluice-vpn/sluice/dnsproxy"
	"github.com/sluice-vpn/sluice/firewall"
	"github.com/sluice-vpn/sluice/peers"
)

// controlTimeout bounds one CLI request to the daemon.
const controlTimeout = 30 * time.Second

// listenControl claims the control socket (mode 0600). A socket that another
// live daemon answers on is an error; a stale one is replaced.
func listenControl(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create control socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, ErrRunning)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale control socket: %w", err)
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod control socket: %w", err)
	}
	return ln, nil
}

// ErrRunning means another sluice already runs for this interface.
var ErrRunning = errors.New("another sluice is already running for this interface; stop it first or use another interface.name")

// controlled is what the control socket serves; *Gateway implements it and
// tests fake it. Every method returns an error wrapping ErrNotReady while
// the daemon is starting or stopping.
type controlled interface {
	Status() (*Status, error)
	SyncPeers() error
	Reload() (ReloadResult, error)
	FirewallText() (string, error)
	Doctor(ctx context.Context, peer string) (*Report, error)
	// Trace streams the queries of peer ("user" or "user/device") until
	// stop is called; errors wrap errBadPeer or errNoPeer for bad names.
	Trace(peer string, buf int) (records <-chan TraceRecord, stop func(), err error)
}

// Errors of the control API that map to HTTP statuses.
var (
	errBadPeer = errors.New("bad peer name")
	errNoPeer  = errors.New("no such peer")
)

// httpStatus maps an error of a controlled method to its HTTP status.
func httpStatus(err error) int {
	switch {
	case errors.Is(err, ErrNotReady):
		return http.StatusServiceUnavailable
	case errors.Is(err, errBadPeer):
		return http.StatusBadRequest
	case errors.Is(err, errNoPeer):
		return http.StatusNotFound
	}
	return http.StatusInternalServerError
}

func writeError(w http.ResponseWriter, err error) {
	http.Error(w, err.Error(), httpStatus(err))
}

// newControlHandler serves the CLI. Streams (trace) end when ctx, the
// daemon's run, ends.
func newControlHandler(ctx context.Context, d controlled) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := d.Status()
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, st)
	})
	mux.HandleFunc("POST /v1/peers/sync", func(w http.ResponseWriter, r *http.Request) {
		if err := d.SyncPeers(); err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, map[string]bool{"ok": true})
	})
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		res, err := d.Reload()
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, res)
	})
	mux.HandleFunc("GET /v1/firewall", func(w http.ResponseWriter, r *http.Request) {
		text, err := d.FirewallText()
		if err != nil {
			writeError(w, err)
			return
		}
		io.WriteString(w, text)
	})
	mux.HandleFunc("GET /v1/doctor", func(w http.ResponseWriter, r *http.Request) {
		rep, err := d.Doctor(r.Context(), r.URL.Query().Get("peer"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, rep)
	})
	mux.HandleFunc("GET /v1/trace", func(w http.ResponseWriter, r *http.Request) {
		serveTrace(ctx, d, w, r)
	})
	return mux
}

// traceBuffer is how many records a slow trace reader may lag behind.
const traceBuffer = 1024

// serveTrace streams the DNS queries of one peer (all its devices when only
// the user is named) as JSON lines until the client goes away.
func serveTrace(ctx context.Context, d controlled, w http.ResponseWriter, r *http.Request) {
	records, stop, err := d.Trace(r.URL.Query().Get("peer"), traceBuffer)
	if err != nil {
		writeError(w, err)
		return
	}
	defer stop()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush() // the client knows the trace started
	}
	enc := json.NewEncoder(w)
	for {
		select {
		case rec := <-records:
			if err := enc.Encode(rec); err != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		case <-r.Context().Done():
			return
		case <-ctx.Done():
			return
		}
	}
}

// SyncPeers applies the peer store to the device now.
func (g *Gateway) SyncPeers() error { return g.use(g.syncPeers) }

// FirewallText returns the active table in nft syntax, with counters.
func (g *Gateway) FirewallText() (string, error) {
	var text string
	err := g.use(func() (err error) {
		text, err = g.fw.Render()
		return err
	})
	return text, err
}

// Trace streams the DNS queries of peer, a user (every device) or
// "user/device", named, until stop is called.
func (g *Gateway) Trace(peer string, buf int) (<-chan TraceRecord, func(), error) {
	user, device := peer, "" // a user alone: every device of that user
	var err error
	if strings.Contains(peer, "/") {
		user, device, err = peers.ParseID(peer)
	} else {
		err = peers.ValidateName("user", peer)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errBadPeer, err)
	}
	var records <-chan dnsproxy.QueryRecord
	var refusals <-chan firewall.EgressEvent
	var stopTap, stopEgress func()
	err = g.use(func() error {
		list, err := g.store.List()
		if err != nil {
			return err
		}
		var addrs []netip.Addr
		for _, p := range list {
			if p.User == user && (device == "" || p.Device == device) {
				addrs = append(addrs, p.IPv4, p.IPv6)
			}
		}
		if len(addrs) == 0 {
			return fmt.Errorf("%w %q (see sluice peer list)", errNoPeer, peer)
		}
		records, stopTap = g.proxy.Tap(addrs, buf)
		refusals, stopEgress = g.egress.tap(addrs, buf)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	out := make(chan TraceRecord, buf)
	gwName := g.Config().Fleet.Name
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() { // names each record; ends at stop
		defer close(finished)
		for {
			select {
			case rec := <-records:
				select {
				case out <- TraceRecord{QueryRecord: rec, Peer: g.peerName(rec.Client.Addr()), Gateway: gwName}:
				default: // the reader lags: drop, like the tap
				}
			case ev := <-refusals:
				line := TraceRecord{Peer: g.peerName(ev.Src), Gateway: gwName, Egress: &EgressTrace{Dst: ev.Dst.String(), Proto: ev.Proto, Port: ev.Port, Refused: ev.Refused}}
				line.Time, line.Client = ev.Time, netip.AddrPortFrom(ev.Src, 0)
				select {
				case out <- line:
				default:
				}
			case <-done:
				return
			}
		}
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			close(done)
			<-finished
			stopTap()
			stopEgress()
		})
	}
	return out, stop, nil
}

// TraceRecord is one query of a traced peer, as `sluice peer trace` shows it.
type TraceRecord struct {
	Peer string `json:"peer"`
	// Gateway is the fleet gateway that saw it (fleet.name); "" without fleet.
	Gateway string `json:"gateway,omitempty"`
	dnsproxy.QueryRecord
	Egress *EgressTrace `json:"egress,omitempty"` // set for a refused (or audited) flow, not a query
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client sees a truncated body if the write fails
}

// Client talks to a running daemon over its control socket.
type Client struct {
	path string
	http *http.Client
}

// NewClient returns a client for the control socket at path.
//
// Every request has a connection of its own (a local socket costs next to
// nothing to open): a kept-alive one that a stopping daemon closed would
// fail a POST with "server closed idle connection" instead of
// ErrNotRunning, and one kept across a daemon restart would talk to a
// socket that is gone.
func NewClient(path string) *Client {
	return &Client{path: path, http: &http.Client{
		Timeout: controlTimeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
		},
	}}
}

// ErrNotRunning is returned when no daemon answers on the control socket.
var ErrNotRunning = errNoDaemon

// open sends a request over hc and returns the response of a 200 answer;
// any other status becomes an error carrying the daemon's message.
func (c *Client) open(ctx context.Context, hc *http.Client, method, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://sluice"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, c.dialError(path, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		msg := string(bytes.TrimSpace(body))
		if resp.StatusCode == http.StatusServiceUnavailable {
			// The daemon runs but is starting or stopping.
			return nil, fmt.Errorf("%w: %s", ErrNotReady, strings.TrimPrefix(msg, ErrNotReady.Error()+": "))
		}
		return nil, fmt.Errorf("daemon %s: %s", path, msg)
	}
	return resp, nil
}

// ErrPermission is returned when the control socket exists but this user
// may not use it (it is 0600, owned by the daemon's user).
var ErrPermission = errors.New("permission denied")

// dialError explains a failed request: no daemon, a daemon this user may
// not talk to, or a failure talking to it.
func (c *Client) dialError(path string, err error) error {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" {
		if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			// The connection was taken, then closed unanswered: the
			// daemon stopped (or died) in between.
			return fmt.Errorf("%w (the daemon on %s went away before answering %s)", ErrNotRunning, c.path, path)
		}
		return fmt.Errorf("ask daemon %s: %w", path, err)
	}
	if errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("%w on the control socket %s: run as root", ErrPermission, c.path)
	}
	return fmt.Errorf("%w (no daemon on %s)", ErrNotRunning, c.path)
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	resp, err := c.open(ctx, c.http, method, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read daemon answer: %w", err)
	}
	if s, ok := out.(*string); ok {
		*s = string(body)
		return nil
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("decode daemon answer: %w", err)
		}
	}
	return nil
}

// Status asks the daemon for its status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.do(ctx, http.MethodGet, "/v1/status", &s)
}

// SyncPeers asks the daemon to apply the peer store now.
func (c *Client) SyncPeers(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/peers/sync", nil)
}

// Reload asks the daemon to re-read its configuration.
func (c *Client) Reload(ctx context.Context) (applied bool, notes []string, err error) {
	var r ReloadResult
	if err := c.do(ctx, http.MethodPost, "/v1/reload", &r); err != nil {
		return false, nil, err
	}
	if !r.Applied {
		return false, r.Notes, errors.New(joinLines(r.Errors))
	}
	return true, r.Notes, nil
}

// Firewall returns the active table in nft syntax.
func (c *Client) Firewall(ctx context.Context) (string, error) {
	var s string
	return s, c.do(ctx, http.MethodGet, "/v1/firewall", &s)
}

// Trace streams the DNS queries of peer ("user" or "user/device") to fn
// until ctx ends or fn returns an error.
func (c *Client) Trace(ctx context.Context, peer string, fn func(TraceRecord) error) error {
	stream := &http.Client{Transport: c.http.Transport} // no overall timeout: ctx bounds it
	resp, err := c.open(ctx, stream, http.MethodGet, "/v1/trace?peer="+urlQueryEscape(peer))
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var rec TraceRecord
		if err := dec.Decode(&rec); err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read trace: %w", err)
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
}

// Doctor runs the gateway-side checks in the daemon.
func (c *Client) Doctor(ctx context.Context, peer string) (*Report, error) {
	var r Report
	path := "/v1/doctor"
	if peer != "" {
		path += "?peer=" + urlQueryEscape(peer)
	}
	return &r, c.do(ctx, http.MethodGet, path, &r)
}
