package run

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
)

// bigServer serves size bytes of "x" at /chunked (no Content-Length) and
// /sized (with one), from one reused 1 MiB buffer.
func bigServer(t *testing.T, size int64) *httptest.Server {
	t.Helper()
	chunk := []byte(strings.Repeat("x", 1<<20))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/sized" {
			w.Header().Set("Content-Length", fmt.Sprint(size))
		}
		for left := size; left > 0; {
			n := min(left, int64(len(chunk)))
			if _, err := w.Write(chunk[:n]); err != nil {
				return
			}
			left -= n
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// localState is a run's state whose tools may reach the test's loopback
// servers.
func localState(srv *httptest.Server, maxBytes int64) *state {
	host := strings.TrimPrefix(srv.URL, "http://")
	return &state{e: &Executor{Guard: &Guard{AllowHosts: []string{host}, MaxResponseBytes: maxBytes}}, job: &Job{}}
}

// A 50 MiB body is refused at the 10 MiB default cap, and reading it
// allocates no more than about twice the cap: with the collector off,
// HeapAlloc's growth is everything the fetch allocated.
func TestFetchRefusesBodyOverCap(t *testing.T) {
	const body = 50 << 20
	srv := bigServer(t, body)
	s := localState(srv, 0)
	for _, path := range []string{"/chunked", "/sized"} {
		t.Run(path, func(t *testing.T) {
			runtime.GC()
			defer debug.SetGCPercent(debug.SetGCPercent(-1))
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := s.fetch(context.Background(), http.MethodGet, srv.URL+path, nil, s.guard().maxResponse())
			runtime.ReadMemStats(&after)
			if !errs.Is(err, errs.TooLarge) {
				t.Fatalf("fetch of a 50 MiB body: got %v, want too_large", err)
			}
			for _, want := range []string{"exceeds the 10 MiB cap", "max_tool_response_bytes", srv.URL + path} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
			if bound := int64(2*DefaultMaxToolResponse + 4<<20); grew > bound {
				t.Errorf("heap grew by %d bytes reading a %d-byte body, want at most %d (2× the cap and some)", grew, body, bound)
			}
		})
	}
}

func TestFetchCap(t *testing.T) {
	const capBytes = 64 << 10
	tests := []struct {
		name string
		size int64
		ok   bool
	}{
		{"empty", 0, true},
		{"under", capBytes - 1, true},
		{"exactly the cap", capBytes, true},
		{"one byte over", capBytes + 1, false},
		{"far over", 5 * capBytes, false},
	}
	for _, tt := range tests {
		srv := bigServer(t, tt.size)
		s := localState(srv, capBytes)
		for _, path := range []string{"/chunked", "/sized"} {
			got, err := s.fetch(context.Background(), http.MethodGet, srv.URL+path, nil, capBytes)
			if tt.ok {
				if err != nil {
					t.Errorf("%s %s: got %v, want the body", tt.name, path, err)
				} else if want := fmt.Sprintf("%s%s 200\n%s", srv.URL, path, strings.Repeat("x", int(tt.size))); got != want {
					t.Errorf("%s %s: got %d bytes, want %d", tt.name, path, len(got), len(want))
				}
				continue
			}
			if !errs.Is(err, errs.TooLarge) || !strings.Contains(err.Error(), "exceeds the 64 KiB cap (max_tool_response_bytes)") {
				t.Errorf("%s %s: got %v, want too_large naming the 64 KiB cap", tt.name, path, err)
			}
		}
	}
}

// The URL tool's URLs share one cap: two bodies each under it but over it
// together fail the call.
func TestURLToolSharesCap(t *testing.T) {
	const capBytes = 64 << 10
	srv := bigServer(t, 40<<10)
	s := localState(srv, capBytes)
	tool := s.toolFor(&flow.Node{ID: "url", Type: "URLComponent"})
	if _, err := tool.run(context.Background(), map[string]any{"urls": []any{srv.URL + "/chunked"}}); err != nil {
		t.Fatalf("one URL: got %v, want its body", err)
	}
	_, err := tool.run(context.Background(), map[string]any{"urls": []any{srv.URL + "/chunked", srv.URL + "/sized"}})
	if !errs.Is(err, errs.TooLarge) {
		t.Errorf("two URLs over the cap together: got %v, want too_large", err)
	}
}

// A name that leads to a non-public address fails the node as forbidden,
// naming the host asked for.
func TestFetchRefusedByGuardIsForbidden(t *testing.T) {
	srv := bigServer(t, 10)
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	s := &state{e: &Executor{Guard: &Guard{AllowHosts: []string{"vm:" + port}, resolve: fakeDNS("vm", "runsc")}}, job: &Job{}}
	if _, err := s.fetch(context.Background(), http.MethodGet, "http://vm:"+port+"/", nil, 1<<20); err != nil {
		t.Fatalf("fetch of the allowed name: got %v, want the body", err)
	}
	_, err := s.fetch(context.Background(), http.MethodGet, "http://runsc:"+port+"/", nil, 1<<20)
	if !errs.Is(err, errs.Forbidden) || !strings.Contains(err.Error(), "runsc:"+port) || strings.Contains(err.Error(), "127.0.0.1") {
		t.Errorf("fetch of another name for the same address: got %v, want forbidden naming runsc:%s and no address", err, port)
	}
}
