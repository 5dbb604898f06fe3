package run

import (
	"net/netip"
	"strings"
	"testing"
)

func TestEvaluate(t *testing.T) {
	tests := []struct {
		expr string
		want string
	}{
		{"2 + 2", "4"},
		{"2 + 3 * 4", "14"},
		{"(2 + 3) * 4", "20"},
		{"2 ** 10", "1024"},
		{"2 ^ 3 ^ 2", "512"},
		{"-3 + 5", "2"},
		{"7 % 4", "3"},
		{"1 / 4", "0.25"},
		{"1e3 + 1", "1001"},
		{"1_000 * 3", "3000"},
		{"15 * 23 + 7", "352"},
	}
	for _, tt := range tests {
		v, err := Evaluate(tt.expr)
		if err != nil {
			t.Errorf("Evaluate(%q): %v", tt.expr, err)
			continue
		}
		if got := FormatNumber(v); got != tt.want {
			t.Errorf("Evaluate(%q) = %s, want %s", tt.expr, got, tt.want)
		}
	}
	for _, bad := range []string{"", "2 +", "import os", "__import__('os')", "1/0", "(1", "2 ** 99999", "a", strings.Repeat("(", 200) + "1" + strings.Repeat(")", 200)} {
		if _, err := Evaluate(bad); err == nil {
			t.Errorf("Evaluate(%q): want an error", bad)
		}
	}
}

func FuzzEvaluate(f *testing.F) {
	for _, s := range []string{"1+2*3", "((4))", "-2**2", "1e308*10", "7 % 0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = Evaluate(s) // must not panic or hang
	})
}

func TestGuard(t *testing.T) {
	g := &Guard{}
	for _, u := range []string{"http://127.0.0.1/", "http://localhost:8080/", "http://169.254.169.254/latest/meta-data/",
		"http://10.1.2.3/", "http://[::1]/", "http://192.168.1.1/", "ftp://example.com/", "file:///etc/passwd",
		"http://user:pw@example.com/", "http://metadata.google.internal/", "http://[::ffff:127.0.0.1]/"} {
		if _, err := g.CheckURL(u); err == nil {
			t.Errorf("CheckURL(%q): want refused", u)
		}
	}
	for _, u := range []string{"https://example.com/a", "http://93.184.216.34/"} {
		if _, err := g.CheckURL(u); err != nil {
			t.Errorf("CheckURL(%q): %v", u, err)
		}
	}
	allowed := &Guard{AllowHosts: []string{"127.0.0.1:9"}}
	if _, err := allowed.CheckURL("http://127.0.0.1:9/"); err != nil {
		t.Errorf("allowed host refused: %v", err)
	}
	if !Blocked(netip.MustParseAddr("::ffff:10.0.0.1")) || Blocked(netip.MustParseAddr("8.8.8.8")) {
		t.Error("Blocked misclassifies")
	}
	// The dial-time check catches what a name resolves to.
	c := g.Client(0)
	if _, err := c.Get("http://127.0.0.1:1/"); err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Errorf("dial to loopback: got %v, want refused", err)
	}
}
