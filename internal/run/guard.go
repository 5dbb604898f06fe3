package run

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Guard keeps the URL and API tools away from the platform's own network:
// loopback, link-local (cloud metadata lives there), private and other
// non-public ranges are refused unless an admin allowed the host. The check
// runs on the address actually dialled, so DNS rebinding cannot slip past.
type Guard struct {
	// AllowHosts are host names or IPs an admin allowed despite the rules.
	AllowHosts []string
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

func (g *Guard) allowed(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, h := range g.AllowHosts {
		if strings.EqualFold(strings.TrimSuffix(h, "."), host) {
			return true
		}
	}
	return false
}

// CheckURL validates a URL before any request: scheme and, for literal IPs
// and well-known metadata names, the destination.
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
	if g.allowed(host) {
		return u, nil
	}
	lower := strings.ToLower(host)
	if lower == "localhost" || strings.HasSuffix(lower, ".localhost") || lower == "metadata.google.internal" || strings.HasSuffix(lower, ".internal") {
		return nil, fmt.Errorf("host %s is not allowed: internal address", host)
	}
	if ip, err := netip.ParseAddr(host); err == nil && Blocked(ip) {
		return nil, fmt.Errorf("address %s is not allowed: not a public address", host)
	}
	return u, nil
}

// Client returns an HTTP client whose every connection (redirects
// included) is checked against the rules at dial time.
func (g *Guard) Client(timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second, Control: func(network, address string, _ syscall.RawConn) error {
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return err
		}
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return fmt.Errorf("dial %s: not an IP", address)
		}
		if Blocked(ip) && !g.allowedIP(ip) {
			return fmt.Errorf("address %s is not allowed: not a public address", ip)
		}
		return nil
	}}
	tr := &http.Transport{
		Proxy:                 nil, // a proxy would hide the real destination from the guard
		DialContext:           d.DialContext,
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

// allowedIP lets an allowed host that is a literal IP through at dial time.
func (g *Guard) allowedIP(ip netip.Addr) bool {
	for _, h := range g.AllowHosts {
		if a, err := netip.ParseAddr(h); err == nil && a.Unmap() == ip.Unmap() {
			return true
		}
	}
	return g.allowedResolved(ip)
}

// allowedResolved lets through addresses of allowed host names, resolved
// when the guard is used (tests allow "127.0.0.1" directly instead).
func (g *Guard) allowedResolved(ip netip.Addr) bool {
	for _, h := range g.AllowHosts {
		if _, err := netip.ParseAddr(h); err == nil {
			continue
		}
		addrs, err := net.DefaultResolver.LookupNetIP(context.Background(), "ip", h)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if a.Unmap() == ip.Unmap() {
				return true
			}
		}
	}
	return false
}
