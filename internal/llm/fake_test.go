package llm_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// upstream is an httptest server standing in for a provider. Handlers
// replay recorded answers from testdata, byte for byte, and the server
// keeps every request it got.
type upstream struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	Method, Path string
	Header       http.Header
	Body         map[string]any
}

func newUpstream(t *testing.T, h http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		rec := recorded{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone()}
		_ = json.Unmarshal(raw, &rec.Body)
		u.mu.Lock()
		u.reqs = append(u.reqs, rec)
		u.mu.Unlock()
		h(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

// last returns the last request the server got.
func (u *upstream) last(t *testing.T) recorded {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		t.Fatal("upstream got no request")
	}
	return u.reqs[len(u.reqs)-1]
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// replay answers with a fixture as one body.
func replay(t *testing.T, status int, contentType, name string, header map[string]string) http.HandlerFunc {
	body := fixture(t, name)
	return func(w http.ResponseWriter, r *http.Request) {
		for k, v := range header {
			w.Header().Set(k, v)
		}
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}
}

// streamOpts shapes a streamed replay.
type streamOpts struct {
	contentType string
	sep         string // what ends one event: "\n\n" for SSE, "\n" for NDJSON
	// cutAfter > 0 sends that many events, then drops the connection
	// without ending the body.
	cutAfter int
	// holdAfter > 0 sends that many events, then waits for the client to
	// go away.
	holdAfter int
}

// replayStream sends a fixture event by event, flushing each, as a real
// provider does.
func replayStream(t *testing.T, name string, o streamOpts) http.HandlerFunc {
	events := splitEvents(fixture(t, name), o.sep)
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", o.contentType)
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		f := w.(http.Flusher)
		for i, ev := range events {
			if o.cutAfter > 0 && i == o.cutAfter {
				panic(http.ErrAbortHandler) // closes the connection mid-body
			}
			if o.holdAfter > 0 && i == o.holdAfter {
				select {
				case <-r.Context().Done():
				case <-time.After(10 * time.Second):
					t.Error("client did not hang up")
				}
				return
			}
			_, _ = w.Write(ev)
			f.Flush()
		}
	}
}

func splitEvents(b []byte, sep string) [][]byte {
	var out [][]byte
	for _, part := range strings.SplitAfter(string(b), sep) {
		if strings.TrimSpace(part) != "" {
			out = append(out, []byte(part))
		}
	}
	return out
}

func sse() streamOpts {
	return streamOpts{contentType: "text/event-stream; charset=utf-8", sep: "\n\n"}
}

func ndjson() streamOpts {
	return streamOpts{contentType: "application/x-ndjson", sep: "\n"}
}

// jsonEqual compares a decoded request field with the JSON want.
func jsonEqual(t *testing.T, what string, got any, want string) {
	t.Helper()
	var w any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad want JSON for %s: %v", what, err)
	}
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(w)
	if !bytes.Equal(gb, wb) {
		t.Errorf("%s = %s, want %s", what, gb, wb)
	}
}
