package run

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// fakeDNS answers the names a test uses: every one of them is this
// machine's loopback address, as several names of one host would be.
func fakeDNS(names ...string) func(ctx context.Context, host string) ([]netip.Addr, error) {
	return func(_ context.Context, host string) ([]netip.Addr, error) {
		for _, n := range names {
			if strings.EqualFold(n, host) {
				return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
			}
		}
		// As the resolver says it: with its own address in the text.
		return nil, &net.DNSError{Err: "no such host", Name: host, Server: "10.0.0.53:53", IsNotFound: true}
	}
}

func TestGuardAllowHosts(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(srv.Close)
	port := strconv.Itoa(srv.Listener.Addr().(*net.TCPAddr).Port)
	// A port nothing listens on, for a refused connection.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()

	tests := []struct {
		name  string
		allow []string
		url   string
		ok    bool
		// names must appear in the refusal; never an address the URL does
		// not name.
		names string
	}{
		{"allowed name and port", []string{"vm:" + port}, "http://vm:" + port + "/", true, ""},
		{"case-insensitive name", []string{"VM:" + port}, "http://Vm:" + port + "/x", true, ""},
		{"entry with a trailing dot", []string{"vm.:" + port}, "http://vm:" + port + "/", true, ""},
		{"any port", []string{"vm:*"}, "http://vm:" + port + "/", true, ""},
		{"IP entry, IP URL", []string{"127.0.0.1:" + port}, "http://127.0.0.1:" + port + "/", true, ""},
		{"another name for the same address", []string{"vm:" + port}, "http://runsc:" + port + "/", false, "runsc:" + port},
		{"name resolving to an allowed IP", []string{"127.0.0.1:" + port}, "http://vm:" + port + "/", false, "vm:" + port},
		{"port mismatch", []string{"vm:1"}, "http://vm:" + port + "/", false, "vm:" + port},
		{"no port: 80 and 443 only", []string{"vm"}, "http://vm:" + port + "/", false, "vm:" + port},
		{"nothing allowed", nil, "http://vm:" + port + "/", false, "vm:" + port},
		{"suffix is not a match", []string{"vm:" + port}, "http://evil-vm:" + port + "/", false, "evil-vm:" + port},
		{"unknown name", nil, "http://nowhere.example/", false, "nowhere.example:80"},
		{"refused connection to an allowed name", []string{"vm:*"}, "http://vm:" + closedPort + "/", false, "vm:" + closedPort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &Guard{AllowHosts: tt.allow, resolve: fakeDNS("vm", "runsc", "evil-vm")}
			if err := g.Validate(); err != nil {
				t.Fatalf("Validate() = %v, want nil", err)
			}
			u, err := g.CheckURL(tt.url)
			if err == nil {
				var resp *http.Response
				resp, err = g.Client(0).Get(u.String())
				if err == nil {
					resp.Body.Close()
				}
			}
			if tt.ok {
				if err != nil {
					t.Fatalf("GET %s: got %v, want allowed", tt.url, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("GET %s: got allowed, want refused", tt.url)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.names) {
				t.Errorf("refusal %q does not name %s", msg, tt.names)
			}
			for _, ip := range []string{"127.0.0.1", "10.0.0.53"} {
				if !strings.Contains(tt.url, ip) && strings.Contains(msg, ip) {
					t.Errorf("refusal %q shows the address %s", msg, ip)
				}
			}
		})
	}
}

func TestGuardRefusesPrivateLiterals(t *testing.T) {
	g := &Guard{AllowHosts: []string{"10.0.0.7:9000", "[fd00::7]:9000", "fd00::8"}}
	tests := []struct {
		url string
		ok  bool
	}{
		{"http://10.0.0.7:9000/", true},
		{"http://10.0.0.7/", false},
		{"http://10.0.0.8:9000/", false},
		{"http://[fd00::7]:9000/", true},
		{"https://[fd00::8]/", true},
		{"http://[fd00::8]:8080/", false},
		{"http://localhost:9000/", false},
		{"http://metadata.google.internal/", false},
	}
	for _, tt := range tests {
		_, err := g.CheckURL(tt.url)
		if got := err == nil; got != tt.ok {
			t.Errorf("CheckURL(%s): got allowed %v (%v), want %v", tt.url, got, err, tt.ok)
		}
	}
}

func TestGuardValidate(t *testing.T) {
	tests := []struct {
		entry string
		ok    bool
	}{
		{"vm", true}, {"vm:8080", true}, {"vm:*", true}, {"VM.example.com.", true}, {"10.0.0.1", true},
		{"[::1]:80", true}, {"::1", true}, {"[::1]", true},
		{"vm:0", false}, {"vm:70000", false}, {"vm:http", false}, {"*.example.com", false}, {"http://vm", false}, {"", false},
	}
	for _, tt := range tests {
		err := (&Guard{AllowHosts: []string{tt.entry}}).Validate()
		if got := err == nil; got != tt.ok {
			t.Errorf("Validate(%q): got ok %v (%v), want %v", tt.entry, got, err, tt.ok)
		}
	}
}

// The resolver's failure is reported without the resolver's address.
func TestGuardDNSErrorHidesResolver(t *testing.T) {
	g := &Guard{resolve: func(context.Context, string) ([]netip.Addr, error) {
		return nil, &net.DNSError{Err: "server misbehaving", Name: "vm", Server: "10.0.0.53:53"}
	}}
	_, err := g.dialContext(context.Background(), "tcp", "vm:80")
	if err == nil || strings.Contains(err.Error(), "10.0.0.53") || !strings.Contains(err.Error(), "vm:80") {
		t.Errorf("dial: got %v, want an error naming vm:80 and not the resolver", err)
	}
	var de *net.DNSError
	if errors.As(err, &de) {
		t.Errorf("dial error wraps the resolver's error %v", de)
	}
}

func FuzzParseAllowHost(f *testing.F) {
	for _, s := range []string{"vm", "vm:8080", "vm:*", "[::1]:80", "::1", "10.0.0.1", "VM.", "a:b:c", "[", "]:", "*:*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := parseAllowHost(s)
		if err != nil {
			return
		}
		if e.ip.IsValid() == (e.host != "") {
			t.Fatalf("parseAllowHost(%q) = %+v: want exactly one of a name and an IP", s, e)
		}
		if e.port < -1 || e.port > 65535 || strings.ContainsAny(e.host, "*:/[] ") || e.host != strings.ToLower(e.host) {
			t.Fatalf("parseAllowHost(%q) = %+v: not a lower-case host and a port", s, e)
		}
	})
}
