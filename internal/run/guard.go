package run

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
)

// Guard keeps the URL and API tools away from the platform's own network:
// loopback, link-local (cloud metadata lives there), private and other
// non-public ranges are refused unless an admin allowed the host asked for.
//
// An allowance is for a name, never for an address: a URL passes because
// the host it names (and its port) matches an AllowHosts entry, not because
// it resolves to the same address as an allowed name (another name for the
// same machine may be another service on it, Sluice's own port included).
// The guard resolves the name itself, checks every address, and dials the
// address it checked, so DNS rebinding cannot slip past. Its refusals name
// the host and port asked for, never an address the resolver gave.
type Guard struct {
	// AllowHosts are host[:port] entries an admin allowed despite the rules:
	// "vm" (ports 80 and 443), "vm:8080" (that port), "vm:*" (any port),
	// "10.0.0.7:9000", "[fd00::7]:9000". Names match case-insensitively and
	// exactly; an IP entry matches a URL that names that IP.
	AllowHosts []string
	// MaxResponseBytes bounds what one tool call reads (a URL tool's
	// responses together): max_tool_response_bytes, 0 for
	// DefaultMaxToolResponse. A response over it fails the node; no more
	// than the cap is ever held in memory.
	MaxResponseBytes int64

	// resolve looks names up; nil for the default resolver (tests swap it).
	resolve func(ctx context.Context, host string) ([]netip.Addr, error)
}

// DefaultMaxToolResponse is the tool response cap when none is configured.
const DefaultMaxToolResponse = 10 << 20

// maxResponse is the tool response cap in force.
func (g *Guard) maxResponse() int64 {
	if g == nil || g.MaxResponseBytes <= 0 {
		return DefaultMaxToolResponse
	}
	return g.MaxResponseBytes
}

var blockedPrefixes = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
		"192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
		"224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
		"::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "100::/64", "2001:db8::/32", "fc00::/7", "fe80::/10", "ff00::/8",
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// Blocked reports whether ip is outside the public internet.
func Blocked(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range blockedPrefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// allowEntry is one parsed AllowHosts entry.
type allowEntry struct {
	host string     // lower case, no trailing dot; "" for an IP entry
	ip   netip.Addr // valid for an IP entry
	port int        // 0: 80 and 443; -1: any
}

// parseAllowHost reads "host", "host:port", "host:*", "[v6]:port" or a
// bare IPv6 address.
func parseAllowHost(s string) (allowEntry, error) {
	s = strings.TrimSpace(s)
	host, port := s, ""
	if h, p, err := net.SplitHostPort(s); err == nil {
		host, port = h, p
	} else if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		host = s[1 : len(s)-1]
	}
	var e allowEntry
	switch port {
	case "":
	case "*":
		e.port = -1
	default:
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return e, fmt.Errorf("allow_hosts entry %q: port %q is not 1..65535 or *", s, port)
		}
		e.port = n
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		e.ip = ip.Unmap()
		return e, nil
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "" || strings.ContainsAny(host, "/@?#[]*: \t") {
		return e, fmt.Errorf("allow_hosts entry %q is not host, host:port or host:*", s)
	}
	e.host = host
	return e, nil
}

// Validate reports the first AllowHosts entry that is not host[:port].
func (g *Guard) Validate() error {
	for _, h := range g.AllowHosts {
		if _, err := parseAllowHost(h); err != nil {
			return err
		}
	}
	return nil
}

// allowed reports whether an entry names host (as asked for: a name or an
// IP literal) and port.
func (g *Guard) allowed(host string, port int) bool {
	ip, ipErr := netip.ParseAddr(host)
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, h := range g.AllowHosts {
		e, err := parseAllowHost(h)
		if err != nil {
			continue // Validate reported it at start
		}
		if ipErr == nil {
			if !e.ip.IsValid() || e.ip != ip.Unmap() {
				continue
			}
		} else if e.host != host {
			continue
		}
		switch e.port {
		case -1:
			return true
		case 0:
			if port == 80 || port == 443 {
				return true
			}
		default:
			if port == e.port {
				return true
			}
		}
	}
	return false
}

// urlPort is the URL's port, or its scheme's default.
func urlPort(u *url.URL) (int, error) {
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return 0, fmt.Errorf("port %q is not 1..65535", p)
		}
		return n, nil
	}
	if u.Scheme == "https" {
		return 443, nil
	}
	return 80, nil
}

// hostPort names a destination as asked for, for messages.
func hostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// CheckURL validates a URL before any request: scheme and, for literal IPs
// and well-known internal names, the destination. Names are checked again,
// on every address they resolve to, when the request dials.
func (g *Guard) CheckURL(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%q is not an absolute URL", raw)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("scheme %q is not allowed (http and https only)", u.Scheme)
	}
	if u.User != nil {
		return nil, fmt.Errorf("URLs with credentials are not allowed")
	}
	host := u.Hostname()
	port, err := urlPort(u)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", u.Redacted(), err)
	}
	if g.allowed(host, port) {
		return u, nil
	}
	lower := strings.ToLower(strings.TrimSuffix(host, "."))
	if lower == "localhost" || strings.HasSuffix(lower, ".localhost") || lower == "metadata.google.internal" || strings.HasSuffix(lower, ".internal") {
		return nil, fmt.Errorf("host %s is not allowed: internal address (allow_hosts does not list it)", hostPort(host, port))
	}
	if ip, err := netip.ParseAddr(host); err == nil && Blocked(ip) {
		return nil, fmt.Errorf("host %s is not allowed: not a public address (allow_hosts does not list it)", hostPort(host, port))
	}
	return u, nil
}

// dialTimeout bounds one connection attempt.
const dialTimeout = 10 * time.Second

// dialContext resolves the host asked for, checks every address it gives,
// and dials one it checked. Errors name addr as asked for, never an address.
func (g *Guard) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %v", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: bad port", addr)
	}
	asked := hostPort(host, port)
	allowed := g.allowed(host, port)
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else {
		resolve := g.resolve
		if resolve == nil {
			resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
				return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
			}
		}
		addrs, err = resolve(ctx, host)
		if err != nil || len(addrs) == 0 {
			// The resolver's own error names the resolver's address.
			var de *net.DNSError
			if errors.As(err, &de) && de.IsNotFound {
				return nil, fmt.Errorf("host %s not found", asked)
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("cannot resolve host %s", asked)
		}
	}
	if !allowed {
		for _, ip := range addrs {
			if Blocked(ip) {
				// One address of the name is internal: refuse the name
				// outright rather than reach its public ones by luck.
				return nil, errs.E(errs.Forbidden, "host %s is not allowed: it resolves to a non-public address (allow_hosts does not list it)", asked)
			}
		}
	}
	d := &net.Dialer{Timeout: dialTimeout}
	var lastErr error
	for _, ip := range addrs {
		c, err := d.DialContext(ctx, network, netip.AddrPortFrom(ip.Unmap(), uint16(port)).String())
		if err == nil {
			return c, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	return nil, fmt.Errorf("connect to %s: %s", asked, dialReason(lastErr))
}

// dialReason says why a connection failed without the address dialled.
func dialReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "host unreachable"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timed out"
	}
	return "connection failed"
}

// Client returns an HTTP client whose every connection (redirects
// included) goes through the guard's resolve-check-dial.
func (g *Guard) Client(timeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy:                 nil, // a proxy would hide the real destination from the guard
		DialContext:           g.dialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: timeout,
		MaxIdleConns:          16,
		IdleConnTimeout:       30 * time.Second,
	}
	return &http.Client{Timeout: timeout, Transport: tr, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) >= 5 {
			return fmt.Errorf("stopped after 5 redirects")
		}
		_, err := g.CheckURL(req.URL.String())
		return err
	}}
}
