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
	"syscall"
	"time"

	"github.com/sluice-vpn/sluice/dnsproxy"
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

type reloadResult struct {
	Applied bool     `json:"applied"`
	Errors  []string `json:"errors,omitempty"`
	Notes   []string `json:"notes,omitempty"`
}

// controlHandler serves the CLI. Streams (trace) end when ctx, the daemon's
// run, ends.
func (g *Gateway) controlHandler(ctx context.Context) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, g.Status())
	})
	mux.HandleFunc("POST /v1/peers/sync", func(w http.ResponseWriter, r *http.Request) {
		if err := g.syncPeers(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, map[string]bool{"ok": true})
	})
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, g.Reload())
	})
	mux.HandleFunc("GET /v1/firewall", func(w http.ResponseWriter, r *http.Request) {
		text, err := g.fw.Render()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		io.WriteString(w, text)
	})
	mux.HandleFunc("GET /v1/doctor", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, g.Doctor(r.Context(), r.URL.Query().Get("peer")))
	})
	mux.HandleFunc("GET /v1/trace", func(w http.ResponseWriter, r *http.Request) {
		g.serveTrace(ctx, w, r)
	})
	return mux
}

// traceBuffer is how many records a slow trace reader may lag behind.
const traceBuffer = 1024

// serveTrace streams the DNS queries of one peer (all its devices when only
// the user is named) as JSON lines until the client goes away.
func (g *Gateway) serveTrace(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("peer")
	user, device := id, "" // a user alone: every device of that user
	var err error
	if strings.Contains(id, "/") {
		user, device, err = peers.ParseID(id)
	} else {
		err = peers.ValidateName("user", id)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	list, err := g.store.List()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	var addrs []netip.Addr
	for _, p := range list {
		if p.User == user && (device == "" || p.Device == device) {
			addrs = append(addrs, p.IPv4, p.IPv6)
		}
	}
	if len(addrs) == 0 {
		http.Error(w, fmt.Sprintf("no peer %q (see sluice peer list)", id), http.StatusNotFound)
		return
	}
	records, stop := g.proxy.Tap(addrs, traceBuffer)
	defer stop()
	refusals, stopEgress := g.egress.tap(addrs, traceBuffer)
	defer stopEgress()
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
			line := traceLine{QueryRecord: rec, Peer: g.peerName(rec.Client.Addr())}
			if err := enc.Encode(line); err != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		case ev := <-refusals:
			line := traceLine{Peer: g.peerName(ev.Src), Egress: &EgressTrace{Dst: ev.Dst.String(), Proto: ev.Proto, Port: ev.Port, Refused: ev.Refused}}
			line.Time, line.Client = ev.Time, netip.AddrPortFrom(ev.Src, 0)
			if err := enc.Encode(line); err != nil {
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

// traceLine is one record of `sluice peer trace`.
type traceLine struct {
	Peer string `json:"peer"`
	dnsproxy.QueryRecord
	Egress *EgressTrace `json:"egress,omitempty"` // set for a refused (or audited) flow, not a query
}

func (g *Gateway) serveControl(ctx context.Context, ln net.Listener) error {
	return serveHTTP(ctx, ln, g.controlHandler(ctx))
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
func NewClient(path string) *Client {
	return &Client{path: path, http: &http.Client{
		Timeout: controlTimeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
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
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, fmt.Errorf("%w (no daemon on %s)", ErrNotRunning, c.path)
		}
		return nil, fmt.Errorf("ask daemon %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return nil, fmt.Errorf("daemon %s: %s", path, bytes.TrimSpace(body))
	}
	return resp, nil
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
	var r reloadResult
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

// TraceRecord is one query of a traced peer.
type TraceRecord = traceLine

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
